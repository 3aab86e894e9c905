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

from absvit.io import atomic_dir

SHAPES = ("circle", "ring", "square", "triangle", "star", "cross", "crescent", "lshape", "arrow", "bar")
WNIDS = tuple(f"n9{i + 1:07d}" for i in range(len(SHAPES)))  # wnid-like, sorted = class order
SPLIT_IDS = {"train": 0, "val": 1, "imagenet-a": 2, "imagenet-r": 3, "imagenet-sketch": 4}
A_CLASSES = (0, 2, 4, 5, 7, 9)  # the A and R subsets overlap partly, like the real ones
R_CLASSES = (1, 2, 3, 4, 6, 8)


def _polygon(shape: str) -> list[list[tuple[float, float]]]:
    """Unit-size outline(s) of a shape, centred on 0, as polygons."""
    circle = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    if shape == "circle":
        return [circle]
    if shape == "ring":
        return [circle, [(0.55 * x, 0.55 * y) for x, y in circle]]
    if shape == "square":
        return [[(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]]
    if shape == "triangle":
        return [[(0, -1), (0.95, 0.75), (-0.95, 0.75)]]
    if shape == "star":
        return [[(math.cos(t) * r, math.sin(t) * r) for i, t in enumerate(np.linspace(0, 2 * math.pi, 10, endpoint=False))
                 for r in [1.0 if i % 2 == 0 else 0.42]]]
    if shape == "cross":
        a, b = 0.3, 1.0
        return [[(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]]
    if shape == "crescent":
        outer = [(math.cos(t), math.sin(t)) for t in np.linspace(-0.5 * math.pi, 0.5 * math.pi, 24)]
        inner = [(0.45 * math.cos(t), math.sin(t)) for t in np.linspace(0.5 * math.pi, -0.5 * math.pi, 24)]
        return [outer + inner]
    if shape == "lshape":
        return [[(-0.8, -1), (-0.2, -1), (-0.2, 0.4), (0.8, 0.4), (0.8, 1), (-0.8, 1)]]
    if shape == "arrow":
        return [[(-1, -0.25), (0.2, -0.25), (0.2, -0.7), (1, 0), (0.2, 0.7), (0.2, 0.25), (-1, 0.25)]]
    if shape == "bar":
        return [[(-1, -0.22), (1, -0.22), (1, 0.22), (-1, 0.22)]]
    raise ValueError(shape)


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


def _colour(rng, lo=0, hi=256):
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def draw(cls: int, rng: np.random.Generator, size: int, style: Style) -> Image.Image:
    """One image of class ``cls``."""
    paper = style.mode in ("outline", "sketch")
    bg = (245, 245, 240) if paper else _colour(rng, 40, 220)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    if not paper:  # a two-tone gradient plus random strokes and blobs
        top, bottom = np.array(_colour(rng, 30, 230)), np.array(bg)
        ramp = np.linspace(0, 1, size)[:, None, None]
        img = Image.fromarray(np.uint8(top * (1 - ramp) + bottom * ramp).repeat(size, axis=1))
        d = ImageDraw.Draw(img)
        for _ in range(style.clutter):
            p = rng.uniform(0, size, 4)
            d.line([tuple(p[:2]), tuple(p[2:])], fill=_colour(rng), width=1)
        for _ in range(style.blobs):
            p, r = rng.uniform(0, size, 2), rng.uniform(0.03, 0.1) * size
            d.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=_colour(rng))

    radius = rng.uniform(*style.scale) * size
    cx, cy = rng.uniform(radius * 0.8, size - radius * 0.8, 2)
    angle = rng.uniform(0, 2 * math.pi)
    ca, sa = math.cos(angle), math.sin(angle)
    polys = [[(cx + radius * (x * ca - y * sa), cy + radius * (x * sa + y * ca)) for x, y in poly] for poly in _polygon(SHAPES[cls])]
    # the object contrasts with the background: its brightness sits on the other side of mid-grey
    fill = _colour(rng, 150, 256) if np.mean(bg) < 128 else _colour(rng, 0, 106)
    edge = max(1, int(size / 32))
    if SHAPES[cls] == "ring" and style.mode in ("photo", "cartoon"):  # a thick band, the hole shows the background
        band = [((a[0] + b[0]) / 2, (a[1] + b[1]) / 2) for a, b in zip(*polys)]
        if style.mode == "cartoon":
            d.line(band + band[:1], fill=(0, 0, 0), width=int(0.45 * radius) + 2 * edge + 2, joint="curve")
        if style.mode == "cartoon":
            d.line(band + band[:1], fill=_colour(rng, 150, 256), width=int(0.45 * radius), joint="curve")
            polys = []
    if style.mode == "photo":  # the shape, filled with its class's stripe texture
        mask = Image.new("L", img.size, 0)
        mdraw = ImageDraw.Draw(mask)
        if SHAPES[cls] == "ring":
            mdraw.line(band + band[:1], fill=255, width=int(0.45 * radius), joint="curve")
        else:
            for poly in polys:
                mdraw.polygon(poly, fill=255)
        img.paste(_texture(cls, rng, size, fill), (0, 0), mask)
        polys = []
    for poly in polys:
        if style.mode == "photo":
            d.polygon(poly, fill=fill)
        elif style.mode == "cartoon":
            d.polygon(poly, fill=_colour(rng, 150, 256), outline=(0, 0, 0), width=edge + 1)
        else:  # outline / sketch: lines only, sketch jittered and grey
            pts = np.array(poly + poly[:1])
            if style.mode == "sketch":
                pts = pts + rng.normal(0, size / 150, pts.shape)
            grey = int(rng.integers(40, 110))
            d.line([tuple(p) for p in pts], fill=(grey, grey, grey) if style.mode == "sketch" else _colour(rng, 0, 120), width=edge)
    for _ in range(style.occluders):
        w, h = rng.uniform(0.15, 0.3, 2) * size
        x, y = cx + rng.uniform(-radius, radius) - w / 2, cy + rng.uniform(-radius, radius) - h / 2
        d.rectangle([x, y, x + w, y + h], fill=_colour(rng))
    if style.mode == "sketch":
        img = img.convert("L").convert("RGB")
    return img.filter(ImageFilter.GaussianBlur(0.4)) if style.mode == "photo" else img


def _texture(cls: int, rng: np.random.Generator, size, fill) -> Image.Image:
    """Stripes whose angle and period belong to the class (jittered), ``fill`` against a contrasting shade.

    ``size``: an int (square) or (height, width)."""
    angle = math.radians(cls * 18 + rng.uniform(-6, 6))
    period = 3.0 + 1.5 * (cls % 3)
    height, width = (size, size) if isinstance(size, int) else size
    y, x = np.mgrid[0:height, 0:width]
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period + rng.uniform(0, 6.3))
    fill = np.asarray(fill, dtype=float)
    other = np.clip(fill + (120 if fill.mean() < 128 else -120), 0, 255)
    return Image.fromarray(np.uint8(fill * wave[..., None] + other * (1 - wave[..., None])))


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
