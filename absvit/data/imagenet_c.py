"""Make an ImageNet-C tree from any validation folder, one (corruption, severity) shard at a time.

As in the published set: each image is resized (shorter side) and centre-cropped, corrupted
with imagecorruptions, and saved as JPEG (quality 85) under
``<out>/<corruption>/<severity>/<wnid>/``. A shard is written to a temporary folder and
renamed into place, so a killed job leaves no half shard behind.
"""
from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from absvit.data.corruptions import corrupt
from absvit.data.readers import ClassFolder, label_space
from absvit.io import atomic_dir
from absvit.progress import LOG_EVERY_S, Progress


def make_shard(src, out, corruption: str, severity: int, *, resize: int = 256, crop: int = 224,
               per_class: int | None = None, seed: int = 0, every_s: float = LOG_EVERY_S) -> Path:
    src, out = Path(src), Path(out)
    classes = label_space(str(src))
    data = ClassFolder(src, classes)
    taken: dict[int, int] = {}
    chosen = []  # the first per_class images of each class
    for i, (_, label) in enumerate(data.samples):
        if per_class is None or taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            chosen.append(i)
    shard = out / corruption / str(severity)
    progress = Progress(f"ImageNet-C: [{corruption}/{severity}]", len(chosen), every_s=every_s)
    with atomic_dir(shard) as tmp:
        for i in chosen:
            path, label = data.samples[i]
            t = time.perf_counter()
            image, _ = data[i]
            data_s = time.perf_counter() - t
            image = _resize_crop(image, resize, crop)
            # imagecorruptions draws from numpy's global RNG: seed it per image for reproducibility
            np.random.seed(zlib.crc32(f"{seed}/{corruption}/{severity}/{path.name}".encode()))
            corrupted = corrupt(np.asarray(image), corruption, severity)
            target = tmp / classes[label] / (path.stem + ".JPEG")
            target.parent.mkdir(exist_ok=True)
            Image.fromarray(corrupted).save(target, quality=85, optimize=True)
            progress.step(images=1, data=data_s)
    return shard


def _resize_crop(image: Image.Image, resize: int, crop: int) -> Image.Image:
    w, h = image.size
    scale = resize / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = image.size
    left, top = (w - crop) // 2, (h - crop) // 2
    return image.crop((left, top, left + crop, top + crop))
