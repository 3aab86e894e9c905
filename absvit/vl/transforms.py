"""The V&L image pipeline of the official code (METER's ``clip_transform`` / ``clip_transform_randaug``).

Evaluation: the short side resized to the input size (bicubic), a centre crop, CLIP's mean / std. Training adds
METER's RandAugment(2, 9) on the PIL image at its own size, before the resize. That RandAugment is built here from
timm's (``timm.data.auto_augment``: its op selection, magnitudes and per-op PIL functions) with METER's settings,
which differ from timm's RandAugment defaults:

- 14 ops drawn with replacement, 2 per image, each applied always (timm: with probability 0.5): AutoContrast,
  Equalize, Rotate, Posterize, Solarize, SolarizeAdd, Color, Contrast, Brightness, Sharpness, ShearX, ShearY and
  the translations by absolute pixels (no Invert);
- magnitude 9 of 30 (timm's scale is of 10: magnitude 3): rotate +-9 degrees, shear +-0.09, translate +-30 px,
  keep 1 bit (posterize), solarize at 76.8, enhance factors 0.64;
- geometric ops resample with nearest neighbour and fill with black (PIL's defaults, which METER leaves alone);
- SolarizeAdd adds 33 to every pixel (clipped at 255) and then solarizes the result at 128, where timm's adds to
  the pixels under 128 only; Solarize's threshold is the unrounded 76.8 (timm rounds it down to 76).
"""
from __future__ import annotations

from PIL import Image, ImageOps
from timm.data.auto_augment import RandAugment, rand_augment_ops
from torchvision import transforms

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

METER_OPS = ("AutoContrast", "Equalize", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
             "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")
METER_N, METER_M = 2, 9  # RandAugment(2, 9): ops per image, magnitude of 30
LEVELS = 10  # timm's magnitude scale


def solarize_add_then_solarize(img: Image.Image, add: int, thresh: int = 128, **_) -> Image.Image:
    """METER's SolarizeAdd: ``add`` to every pixel, clipped to 255, then solarized at ``thresh`` (pixels >= it
    inverted)."""
    added = img.point([min(255, i + add) for i in range(256)] * len(img.getbands()))
    return ImageOps.solarize(added, thresh)


def meter_rand_augment(n: int = METER_N, m: int = METER_M) -> RandAugment:
    """METER's ``RandAugment(n, m)`` (magnitude ``m`` of 30) as timm ops (see the module docstring)."""
    hparams = {"translate_const": 100, "img_mean": (0, 0, 0), "interpolation": Image.NEAREST}
    ops = rand_augment_ops(magnitude=m * LEVELS / 30, prob=1.0, hparams=hparams, transforms=list(METER_OPS))
    for op in ops:
        if op.name == "Solarize":
            op.level_fn = lambda level, _hparams: (level / LEVELS * 256,)
        elif op.name == "SolarizeAdd":
            op.aug_fn = solarize_add_then_solarize
    return RandAugment(ops, num_layers=n)


def vl_view(img_size: int, interpolation=transforms.InterpolationMode.BICUBIC) -> transforms.Compose:
    """What the model sees of a PIL image: the short side resized to ``img_size``, a centre crop to ``img_size`` x
    ``img_size`` (the figures draw the maps over it, and crop an object's mask alike, with nearest neighbours)."""
    return transforms.Compose([transforms.Resize(img_size, interpolation=interpolation), transforms.CenterCrop(img_size)])


def vl_transform(img_size: int, train: bool) -> transforms.Compose:
    """The V&L image pipeline (METER's ``clip_transform``): [METER's RandAugment(2, 9) when training], ``vl_view``,
    CLIP's normalisation. Takes an RGB PIL image."""
    steps = [meter_rand_augment()] if train else []
    steps += [vl_view(img_size), transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)]
    return transforms.Compose(steps)
