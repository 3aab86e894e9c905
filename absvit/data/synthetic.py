"""The embedded default: a small procedurally generated ImageNet look-alike, deterministic from a seed.

Ten shape classes drawn at random position, scale, rotation and colour on cluttered
backgrounds, written as JPEG in the real layouts:

    <root>/train/<wnid>/*.JPEG, <root>/val/<wnid>/*.JPEG    ImageNet
    <root>/imagenet-a/<wnid>/*.JPEG                         hard: heavy clutter, occluders, small objects (subset of classes)
    <root>/imagenet-r/<wnid>/*.JPEG                         renditions: outline and cartoon drawings (subset of classes)
    <root>/imagenet-sketch/<wnid>/*.JPEG                    grey line sketches (all classes)

As with the real A and R (200 of 1000 classes), the A/R trees cover only some classes so
that the logit-restriction path runs. Each image is drawn from its own seed, so the bytes
depend only on (seed, split, class, index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from absvit.data.shapes import (LIGHT, SHAPES, background, band_width, colour, contrasting, paint, place, ring_midline,
                                silhouette)
from absvit.io import atomic_dir

WNIDS = tuple(f"n9{i + 1:07d}" for i in range(len(SHAPES)))  # wnid-like, sorted = class order
SPLIT_IDS = {"train": 0, "val": 1, "imagenet-a": 2, "imagenet-r": 3, "imagenet-sketch": 4}
A_CLASSES = (0, 2, 4, 5, 7, 9)  # the A and R subsets overlap partly, like the real ones
R_CLASSES = (1, 2, 3, 4, 6, 8)
PAPER = (245, 245, 240)  # the background of outlines and sketches


@dataclass
class Style:
    clutter: int = 4  # background strokes
    blobs: int = 0  # background discs (confusable with round classes: hard splits only)
    occluders: int = 0
    scale: tuple[float, float] = (0.28, 0.45)  # object radius as a fraction of the image
    mode: str = "photo"  # photo | outline | cartoon | sketch


STYLES = {
    "train": Style(), "val": Style(),
    "imagenet-a": Style(clutter=10, blobs=6, occluders=2, scale=(0.2, 0.32)),
    "imagenet-r": None,  # alternates outline / cartoon per image
    "imagenet-sketch": Style(clutter=0, mode="sketch"),
}


def draw(cls: int, rng: np.random.Generator, size: int, style: Style) -> Image.Image:
    """One image of class ``cls``."""
    shape = SHAPES[cls]
    paper = style.mode in ("outline", "sketch")
    if paper:
        img, bg = Image.new("RGB", (size, size), PAPER), PAPER
    else:  # a two-tone gradient plus random strokes and blobs
        img, bg = background(rng, size, style.clutter)
    d = ImageDraw.Draw(img)
    for _ in range(0 if paper else style.blobs):
        p, r = rng.uniform(0, size, 2), rng.uniform(0.03, 0.1) * size
        d.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=colour(rng))

    radius = rng.uniform(*style.scale) * size
    cx, cy = rng.uniform(radius * 0.8, size - radius * 0.8, 2)
    polys = place(shape, (cx, cy), radius, rng.uniform(0, 2 * math.pi))
    fill = contrasting(rng, bg)
    edge = max(1, int(size / 32))
    if style.mode == "photo":  # the shape (a ring: a thick band, the hole shows the background) in its class's stripes
        paint(img, silhouette(shape, polys, img.size, band_width(radius)), cls, rng, fill)
        polys = []
    elif style.mode == "cartoon" and shape == "ring":  # the band, outlined in black
        band = ring_midline(polys)
        d.line(band, fill=(0, 0, 0), width=band_width(radius) + 2 * edge + 2, joint="curve")
        d.line(band, fill=colour(rng, *LIGHT), width=band_width(radius), joint="curve")
        polys = []
    for poly in polys:
        if style.mode == "cartoon":
            d.polygon(poly, fill=colour(rng, *LIGHT), outline=(0, 0, 0), width=edge + 1)
        else:  # outline / sketch: lines only, sketch jittered and grey
            pts = np.array(poly + poly[:1])
            if style.mode == "sketch":
                pts = pts + rng.normal(0, size / 150, pts.shape)
            grey = int(rng.integers(40, 110))
            d.line([tuple(p) for p in pts], fill=(grey, grey, grey) if style.mode == "sketch" else colour(rng, 0, 120), width=edge)
    for _ in range(style.occluders):
        w, h = rng.uniform(0.15, 0.3, 2) * size
        x, y = cx + rng.uniform(-radius, radius) - w / 2, cy + rng.uniform(-radius, radius) - h / 2
        d.rectangle([x, y, x + w, y + h], fill=colour(rng))
    if style.mode == "sketch":
        img = img.convert("L").convert("RGB")
    return img.filter(ImageFilter.GaussianBlur(0.4)) if style.mode == "photo" else img


def _style(split: str, index: int) -> Style:
    if split == "imagenet-r":
        return Style(clutter=0, mode="outline" if index % 2 == 0 else "cartoon")
    return STYLES[split]


def classes_of(split: str) -> tuple[int, ...]:
    return {"imagenet-a": A_CLASSES, "imagenet-r": R_CLASSES}.get(split, tuple(range(len(SHAPES))))


def generate(root, *, seed: int = 0, size: int = 64, per_class: dict[str, int], quality: int = 90) -> None:
    """Write every split named in ``per_class`` (split -> images per class) under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in per_class.items():
        if split not in SPLIT_IDS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_IDS)}")
        with atomic_dir(root / split) as tmp:
            for cls in classes_of(split):
                folder = tmp / WNIDS[cls]
                folder.mkdir()
                for i in range(count):
                    rng = np.random.default_rng([seed, SPLIT_IDS[split], cls, i])
                    image = draw(cls, rng, size, _style(split, i))
                    image.save(folder / f"{split}_{WNIDS[cls]}_{i:05d}.JPEG", quality=quality)
