"""The embedded default's segmentation sets: scenes of the classification generator's shapes
with their pixel masks, written in the PASCAL VOC, Cityscapes and ADE20K layouts.

Shape class k (0-9) is label k+1 in VOC (0 background, 255 on a band around each object,
as VOC marks boundaries), trainId k+1 in Cityscapes (background is trainId 0), and label
k+2 in ADE20K (background 1; a few pixels of label 0, "other", which training ignores).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from absvit.data.shapes import BASE, DARK, LIGHT, SHAPES, TOP, colour, gradient, paint, place, silhouette, strokes
from absvit.io import atomic_dir

LAYOUTS = ("voc", "cityscapes", "ade20k")
SIZES = {"voc": (96, 128), "cityscapes": (64, 128), "ade20k": (96, 96)}  # (height, width), like the real aspect ratios


def draw_scene(rng: np.random.Generator, height: int, width: int, objects: int) -> tuple[Image.Image, np.ndarray]:
    """A cluttered background with ``objects`` textured shapes; label map 0 = background, k+1 = shape k."""
    img = gradient(colour(rng, *TOP), colour(rng, *BASE), (width, height))  # top first, unlike shapes.background
    strokes(img, rng, 6)
    label = np.zeros((height, width), np.uint8)
    for _ in range(objects):
        cls = int(rng.integers(len(SHAPES)))
        radius = rng.uniform(0.15, 0.3) * min(height, width)
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        polys = place(SHAPES[cls], (cx, cy), radius, rng.uniform(0, 2 * math.pi))
        mask = silhouette(SHAPES[cls], polys, img.size, ring_band=None)  # a ring: the disc, its hole cut out
        fill = colour(rng, *LIGHT) if rng.uniform() < 0.5 else colour(rng, *DARK)  # light or dark at random
        paint(img, mask, cls, rng, fill)
        label[np.asarray(mask) > 127] = cls + 1
    return img.filter(ImageFilter.GaussianBlur(0.4)), label


def _boundary(label: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds another label (VOC's 255 band)."""
    edge = np.zeros_like(label, dtype=bool)
    edge[1:] |= label[1:] != label[:-1]
    edge[:-1] |= label[:-1] != label[1:]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    return edge


def _voc_palette() -> list[int]:
    palette = []
    for i in range(256):  # VOC's bit-interleaved colour map
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _write(layout: str, root: Path, split: str, index: int, image: Image.Image, label: np.ndarray) -> None:
    if layout == "voc":
        voc = root / "VOCdevkit" / "VOC2012"
        name = f"2012_{split[0]}{index:05d}"
        image.save(voc / "JPEGImages" / f"{name}.jpg", quality=90)
        out = label.copy()
        out[_boundary(label)] = 255
        png = Image.fromarray(out, mode="P")
        png.putpalette(_voc_palette())
        png.save(voc / "SegmentationClass" / f"{name}.png")
        with open(voc / "ImageSets" / "Segmentation" / f"{split}.txt", "a") as f:
            f.write(name + "\n")
    elif layout == "cityscapes":
        city = "synthville"
        name = f"{city}_{index // 100:06d}_{index % 100:06d}"
        for kind, suffix, array in (("leftImg8bit", "leftImg8bit", None), ("gtFine", "gtFine_labelTrainIds", label)):
            folder = root / kind / split / city
            folder.mkdir(parents=True, exist_ok=True)
            (image if array is None else Image.fromarray(array)).save(folder / f"{name}_{suffix}.png")
    else:
        ade = root / "ADEChallengeData2016"
        part = {"train": "training", "val": "validation"}[split]
        name = f"ADE_{'train' if split == 'train' else 'val'}_{index + 1:08d}"
        image.save(ade / "images" / part / f"{name}.jpg", quality=90)
        out = label + 1  # background -> 1, shape k -> k + 2
        out[:2, :2] = 0  # a corner of "other"
        Image.fromarray(out.astype(np.uint8)).save(ade / "annotations" / part / f"{name}.png")


def generate_segmentation(root, *, seed: int = 0, per_split: dict[str, int], layouts=LAYOUTS) -> None:
    """Write ``<root>/<layout>/`` for each layout, each renamed into place when complete."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for layout in layouts:
        with atomic_dir(root / layout) as tmp:
            if layout == "voc":
                for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
                    (tmp / "VOCdevkit" / "VOC2012" / sub).mkdir(parents=True)
            if layout == "ade20k":
                for kind in ("images", "annotations"):
                    for part in ("training", "validation"):
                        (tmp / "ADEChallengeData2016" / kind / part).mkdir(parents=True)
            for split, count in per_split.items():
                for i in range(count):
                    rng = np.random.default_rng([seed, LAYOUTS.index(layout), 0 if split == "train" else 1, i])
                    image, label = draw_scene(rng, *SIZES[layout], objects=int(rng.integers(1, 4)))
                    _write(layout, tmp, split, i, image, label)
