"""ImageNet-C corruptions through ``imagecorruptions``, made to run on numpy 2 / scikit-image 0.26.

imagecorruptions 1.1.2 was written for older libraries and fails on three points here:
``from pkg_resources import resource_filename`` (setuptools no longer ships it),
``np.float_`` (removed in numpy 2), and ``skimage.filters.gaussian(multichannel=True)``
(now ``channel_axis=-1``). ``load_imagecorruptions`` patches exactly those three before import.

Glass blur (about 60% of the time of all 15 corruptions with the library's per-pixel Python
loop) is served by ``absvit.data.glass_blur``, a vectorised version that is pixel-identical
for the same ``np.random`` seed; the library's own stays at
``imagecorruptions.corruptions.glass_blur`` (the reference in the tests).
"""
from __future__ import annotations

import functools
import os
import sys
import types

import numpy as np

# The 15 corruptions of the benchmark, named as the ImageNet-C folders are, with AlexNet's
# error per corruption (averaged over severities) used to normalise CE.
ALEXNET_ERR = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324,
    "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
CORRUPTIONS = tuple(ALEXNET_ERR)
SEVERITIES = (1, 2, 3, 4, 5)
# Some copies of ImageNet-C group corruptions by family.
GROUPS = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}


def _install_compat() -> None:
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            shim = types.ModuleType("pkg_resources")
            # resolved beside the calling module's file, as pkg_resources does for a plain module
            shim.resource_filename = lambda module, name: os.path.join(os.path.dirname(sys.modules[module].__file__), name)
            sys.modules["pkg_resources"] = shim
    if not hasattr(np, "float_"):
        np.float_ = np.float64


def _gaussian_compat(gaussian):
    def wrapped(image, *args, multichannel=None, **kwargs):
        if multichannel:
            kwargs.setdefault("channel_axis", -1)
        return gaussian(image, *args, **kwargs)

    return wrapped


def load_imagecorruptions():
    """The ``imagecorruptions`` package, importable on current numpy / scikit-image, its ``corrupt`` dispatching
    glass blur to ``absvit.data.glass_blur`` and impulse noise to a seeded version. Idempotent."""
    _install_compat()
    import imagecorruptions
    import imagecorruptions.corruptions as impl

    if not getattr(impl.gaussian, "_absvit_compat", False):
        impl.gaussian = _gaussian_compat(impl.gaussian)
        impl.gaussian._absvit_compat = True
    if not getattr(imagecorruptions.corruption_dict["glass_blur"], "_absvit_fast", False):
        # imported here, so that importing CORRUPTIONS loads no scikit-image
        from absvit.data.glass_blur import glass_blur as fast

        def glass_blur(x, severity=1):
            return fast(x, severity, gaussian=impl.gaussian)

        glass_blur._absvit_fast = True
        # corrupt(corruption_name=...) dispatches through this dict; impl.glass_blur is untouched
        imagecorruptions.corruption_dict["glass_blur"] = glass_blur
    if not getattr(imagecorruptions.corruption_dict["impulse_noise"], "_absvit_seeded", False):
        imagecorruptions.corruption_dict["impulse_noise"] = _seeded_impulse_noise(impl)
    return imagecorruptions


def _seeded_impulse_noise(impl):
    """The library's impulse noise calls skimage's ``random_noise`` without a generator, and skimage
    then draws from a fresh, unseeded one: the shard differed on every run. Here it gets a seed drawn
    from numpy's global RNG, which the pipeline seeds per image."""
    def impulse_noise(x, severity=1):
        random_noise = impl.sk.util.random_noise
        impl.sk.util.random_noise = functools.partial(random_noise, rng=int(np.random.randint(2**31)))
        try:
            return impl.impulse_noise(x, severity)
        finally:
            impl.sk.util.random_noise = random_noise

    impulse_noise._absvit_seeded = True
    return impulse_noise


def corrupt(image: np.ndarray, corruption: str, severity: int) -> np.ndarray:
    """Corrupt an RGB uint8 array (H, W, 3); returns uint8 of the same shape."""
    if corruption not in ALEXNET_ERR:
        raise ValueError(f"unknown corruption {corruption!r}; expected one of {list(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1-5, got {severity}")
    out = load_imagecorruptions().corrupt(image, severity=severity, corruption_name=corruption)
    return np.uint8(np.clip(np.asarray(out), 0, 255)).reshape(image.shape)
