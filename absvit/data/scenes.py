"""Multi-object scenes for the appendix figures (Figs. 1, 3, 4): images, per-object masks, a manifest.

Layout (the embedded default writes it; any folder in it can be read, e.g. the official demo images or
LVIS images of ImageNet classes)::

    <root>/manifest.csv      columns image, object, class_index[, mask]; one row per object
    <root>/images/*.png      paths in the manifest are relative to the manifest's folder
    <root>/masks/*.png       one mask per object (non-zero = the object); optional: empty or no column

``class_index`` is the object's class in the model's label space (the embedded default: the shape
classes of ``absvit.data.shapes``, in order; ImageNet: the 1000 sorted wnids). The generated scenes
hold two or three objects of different classes, drawn like the pretraining images (gradient and
stroke background, class-textured shapes, slight blur) but smaller, so that they fit side by side.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from absvit.data.shapes import SHAPES, background, band_width, contrasting, paint, place, silhouette
from absvit.errors import DatasetError, UsageError
from absvit.io import atomic_dir

COLUMNS = ("image", "object", "class_index", "mask")
REQUIRED = COLUMNS[:3]
SCENE_SPLIT = 7  # seeds the scenes apart from the classification splits (synthetic.SPLIT_IDS)


@dataclass
class SceneObject:
    object: str
    class_index: int
    mask: Path | None  # None: no mask (real images without annotation)


@dataclass
class Scene:
    image: Path
    objects: list[SceneObject] = field(default_factory=list)


def _centres(rng: np.random.Generator, size: int, radii: list[float]) -> list[tuple[float, float]]:
    """Centres for discs of ``radii`` inside the image that do not overlap (shrinking the scale if crowded)."""
    for shrink in (1.0, 0.9, 0.8, 0.7, 0.6):
        centres: list[tuple[float, float]] = []
        for r in radii:
            r *= shrink
            for _ in range(60):
                c = tuple(rng.uniform(r * 0.85, size - r * 0.85, 2))
                if all(math.dist(c, o) >= 0.95 * (r + ro * shrink) for o, ro in zip(centres, radii)):
                    centres.append(c)
                    break
            else:
                break
        if len(centres) == len(radii):
            return centres
    raise RuntimeError("could not place the objects")  # not reached for 2-3 objects at the default scale


def draw_scene(rng: np.random.Generator, size: int, classes: list[int],
               colours: list[tuple[int, int, int]] | None = None) -> tuple[Image.Image, list[np.ndarray]]:
    """One scene with an object of each of ``classes``; returns the image and one boolean mask per object.

    ``colours``: each object's RGB colour (the V&L scenes name them); by default each is drawn at random,
    contrasting with the background."""
    img, bg = background(rng, size, 4)
    radii = [rng.uniform(0.19, 0.26) * size for _ in classes]
    centres = _centres(rng, size, radii)
    masks: list[np.ndarray] = []
    for k, (cls, radius, centre) in enumerate(zip(classes, radii, centres)):
        polys = place(SHAPES[cls], centre, radius, rng.uniform(0, 2 * math.pi))
        # a ring is a thick band, as in the pretraining images (here at least a pixel wide)
        mask = silhouette(SHAPES[cls], polys, img.size, max(1, band_width(radius)))
        paint(img, mask, cls, rng, contrasting(rng, bg) if colours is None else colours[k])
        m = np.asarray(mask) > 127
        masks = [prev & ~m for prev in masks] + [m]  # a later object hides what it covers
    return img.filter(ImageFilter.GaussianBlur(0.4)), masks


def generate_scenes(root, *, seed: int = 0, count: int = 24, size: int = 64, objects=(2, 3)) -> Path:
    """Write ``count`` scenes under ``root`` (renamed into place when complete); returns the manifest path."""
    root = Path(root)
    with atomic_dir(root) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        rows = []
        for i in range(count):
            rng = np.random.default_rng([seed, SCENE_SPLIT, i])
            n = int(rng.integers(objects[0], objects[1] + 1))
            classes = [int(c) for c in rng.choice(len(SHAPES), size=n, replace=False)]
            image, masks = draw_scene(rng, size, classes)
            name = f"scene_{i:05d}"
            image.save(tmp / "images" / f"{name}.png")
            for k, (cls, m) in enumerate(zip(classes, masks)):
                Image.fromarray(np.uint8(m) * 255).save(tmp / "masks" / f"{name}_{k}.png")
                rows.append({"image": f"images/{name}.png", "object": k, "class_index": cls,
                             "mask": f"masks/{name}_{k}.png"})
        with open(tmp / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return root / "manifest.csv"


def _header(path: Path) -> tuple[tuple[int, int], str] | None:
    """(size, mode) of an image file, read from its header; None if it is missing or no image."""
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except (UnidentifiedImageError, OSError):
        return None


def read_scenes(path, num_classes: int) -> list[Scene]:
    """The scenes of ``path`` (a folder holding manifest.csv, or the manifest itself), checked row by row.

    A bad manifest raises UsageError naming the manifest, the row (1 = the first row after the header)
    and what was expected: a missing column, an image or mask that is not there or not an image, a
    class index that is not an integer in [0, num_classes), a mask of another size, a repeated object.
    """
    manifest = Path(path)
    manifest = manifest / "manifest.csv" if manifest.is_dir() else manifest
    if not manifest.is_file():
        raise UsageError(f"{manifest}: no such manifest (expected a CSV with columns {', '.join(COLUMNS)}; "
                         "mask may be empty)")
    base = manifest.parent
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise UsageError(f"{manifest}: missing column(s) {', '.join(missing)} (expected columns "
                             f"{', '.join(COLUMNS)}; mask may be empty; found {', '.join(header) or 'none'})")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not rows:
        raise UsageError(f"{manifest}: no rows (expected one row per object)")
    scenes: dict[str, Scene] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for n, row in enumerate(rows, start=1):
        where = f"{manifest}: row {n} (line {n + 1})"
        image = row["image"]
        if image not in sizes:
            header = _header(base / image) if image else None
            if header is None:
                raise UsageError(f"{where}: image {image!r} is missing or not an image "
                                 f"(expected an image file relative to {base})")
            sizes[image] = header[0]
        try:
            cls = int(row["class_index"])
        except ValueError:
            cls = None
        if cls is None or not 0 <= cls < num_classes:
            raise UsageError(f"{where}: class_index {row['class_index']!r} is not a class of the model "
                             f"(expected an integer from 0 to {num_classes - 1})")
        mask = None
        if row.get("mask"):
            mask = base / row["mask"]
            header = _header(mask)
            if header is None:
                raise UsageError(f"{where}: mask {row['mask']!r} is missing or not an image "
                                 f"(expected an image file relative to {base}, or an empty cell)")
            msize, mode = header
            if mode not in MASK_MODES:
                raise UsageError(f"{where}: mask {row['mask']!r} is a {mode} image (expected a single-channel image, "
                                 f"mode {' / '.join(MASK_MODES)}, whose pixels > 127 mark the object)")
            if msize != sizes[image]:
                raise UsageError(f"{where}: mask {row['mask']!r} is {msize[0]}x{msize[1]} but its image is "
                                 f"{sizes[image][0]}x{sizes[image][1]} (expected the same size)")
        scene = scenes.setdefault(image, Scene(base / image))
        if any(o.object == row["object"] for o in scene.objects):
            raise UsageError(f"{where}: object {row['object']!r} of {image!r} appears twice (expected one row per object)")
        scene.objects.append(SceneObject(row["object"], cls, mask))
    return list(scenes.values())


MASK_MODES = ("1", "L", "P")  # single-channel images: a mask's pixels > 127 are inside the object


def checked_mask(im: Image.Image, path) -> Image.Image:
    """``im`` as a grey-level mask; a colour image (an RGB photo given as a mask) is refused, naming ``path``."""
    if im.mode not in MASK_MODES:
        raise DatasetError(f"{path}: a {im.mode} image is not a mask (expected a single-channel image, mode "
                           f"{' / '.join(MASK_MODES)}, whose pixels > 127 mark the object)")
    return im.convert("L")


def load_mask(path: Path | None, size: int) -> np.ndarray | None:
    """A mask as a boolean (size, size) array (nearest-neighbour resize), or None."""
    if path is None:
        return None
    with Image.open(path) as im:
        return np.asarray(checked_mask(im, path).resize((size, size), Image.NEAREST)) > 127
