"""The vectorised glass blur against imagecorruptions' own per-pixel loop, seed for seed."""
import numpy as np
import pytest
from PIL import Image

from absvit.data.corruptions import SEVERITIES, corrupt, load_imagecorruptions
from absvit.data.glass_blur import glass_blur, shuffle_map
from absvit.data.synthetic import WNIDS

load_imagecorruptions()
import imagecorruptions  # noqa: E402  (importable only after the compat shims)
import imagecorruptions.corruptions as impl  # noqa: E402


def _library(image, severity, seed):
    """imagecorruptions.corrupt's glass_blur path, with the library's loop."""
    np.random.seed(seed)
    out = np.uint8(impl.glass_blur(Image.fromarray(image), severity))
    return np.uint8(np.clip(out, 0, 255)), np.random.get_state()[1].copy()


def _images(embedded):
    rng = np.random.default_rng(0)
    jpeg = np.asarray(Image.open(next((embedded / "val" / WNIDS[0]).glob("*.JPEG"))).convert("RGB"))
    return {"random224": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "embedded64": jpeg,
            "random_odd": rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)}


@pytest.mark.parametrize("severity", SEVERITIES)
def test_pixel_identical_to_library(embedded, severity):
    for name, image in _images(embedded).items():
        for seed in (0, 1234):
            want, state = _library(image, severity, seed)
            np.random.seed(seed)
            raw = glass_blur(Image.fromarray(image), severity, gaussian=impl.gaussian)
            # same random stream consumed: the global RNG ends in the same state
            assert np.array_equal(np.random.get_state()[1], state), (name, severity, seed)
            np.random.seed(seed)
            got = corrupt(image, "glass_blur", severity)
            assert got.shape == image.shape and got.dtype == np.uint8
            assert np.array_equal(got, want), (name, severity, seed)
            assert np.array_equal(np.uint8(np.clip(np.uint8(raw), 0, 255)), want)


def test_float_output_identical_to_library():
    image = np.random.default_rng(5).integers(0, 256, (48, 50, 3), dtype=np.uint8)
    for severity in SEVERITIES:
        np.random.seed(9)
        want = impl.glass_blur(Image.fromarray(image), severity)
        np.random.seed(9)
        assert np.array_equal(glass_blur(Image.fromarray(image), severity), want)


def test_corrupt_dispatches_to_fast_version():
    assert getattr(imagecorruptions.corruption_dict["glass_blur"], "_absvit_fast", False)
    assert impl.glass_blur.__module__ == "imagecorruptions.corruptions"  # reference untouched


def test_shuffle_map_copies_not_swaps_and_keeps_the_border():
    np.random.seed(0)
    src = shuffle_map(40, 40, 4, 2)
    h, w = np.divmod(np.arange(40 * 40), 40)
    # the library's "swap" on a view copies, so some pixels are duplicated
    assert len(np.unique(src)) < src.size
    # pixels outside the visited rectangle keep their value
    border = (h <= 4) | (w <= 4)
    assert (src[border] == np.arange(1600)[border]).all()
