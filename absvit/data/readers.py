"""Readers for ImageNet and its robustness sets in their published folder layouts.

Labels always live in one *label space*: the classifier's classes in ImageNet's sorted wnid
order (``imagenet-1k``, from timm's copy of the list), or the sorted class folders of a
training set (the embedded default). A folder of an evaluation set maps each ``<wnid>/``
into that space; ImageNet-A and -R hold 200 of the 1000 classes, and their logits are
restricted to those classes' indices before the argmax.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from absvit.data.corruptions import CORRUPTIONS, GROUPS, SEVERITIES
from absvit.errors import DatasetError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def label_space(spec: str) -> list[str]:
    """``imagenet-1k`` (the 1000 wnids, sorted) or a folder whose subfolders are the classes."""
    if spec == "imagenet-1k":
        from timm.data import ImageNetInfo

        return list(ImageNetInfo("imagenet-1k").label_names())
    return sorted(p.name for p in _class_dirs(Path(spec)))


def _class_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory (expected a folder of class folders <wnid>/)")
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not dirs:
        raise DatasetError(f"{root}: no class folders inside (expected <root>/<wnid>/*.JPEG)")
    return dirs


class ClassFolder:
    """``<root>/<wnid>/<image>`` with labels in ``classes``: a map-style dataset for torch's DataLoader.

    (Not a ``torch.utils.data.Dataset`` subclass on purpose: the data-prep jobs that list and
    read images this way, 75 ImageNet-C shards of them, start a second faster without torch.)

    ``subset=False`` requires every class of the label space to be present (ImageNet val,
    -C, -Sketch); ``subset=True`` accepts a subset (ImageNet-A, -R) and records which
    indices are present in ``class_indices``.
    """

    def __init__(self, root, classes: list[str], transform=None, *, subset: bool = False):
        self.root, self.transform = Path(root), transform
        index = {wnid: i for i, wnid in enumerate(classes)}
        self.samples: list[tuple[Path, int]] = []
        present = []
        for folder in _class_dirs(self.root):
            if folder.name not in index:
                raise DatasetError(
                    f"{folder}: class '{folder.name}' is not in the label space of {len(classes)} classes "
                    f"(expected one of {classes[:3]}...; does the checkpoint's head match this dataset?)")
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DatasetError(f"{folder}: empty class folder (expected image files such as *.JPEG)")
            present.append(index[folder.name])
            self.samples += [(f, index[folder.name]) for f in files]
        missing = sorted(set(classes) - {classes[i] for i in present})
        if missing and not subset:
            raise DatasetError(
                f"{self.root}: {len(missing)} of the {len(classes)} classes are missing (e.g. {missing[:3]}); "
                "this set must hold every class of the label space")
        self.class_indices = sorted(present)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(f"{path}: unreadable image ({e})") from e
        return (self.transform(image) if self.transform else image), label


def imagenet_c_folders(root) -> dict[tuple[str, int], Path]:
    """``(corruption, severity) -> folder`` for a flat or a family-grouped ImageNet-C tree."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory (expected an ImageNet-C tree <root>/<corruption>/<severity>/<wnid>/)")
    family = {c: g for g, cs in GROUPS.items() for c in cs}
    folders, missing = {}, []
    for c in CORRUPTIONS:
        base = root / c if (root / c).is_dir() else root / family[c] / c
        for s in SEVERITIES:
            if (base / str(s)).is_dir():
                folders[(c, s)] = base / str(s)
            else:
                missing.append(f"{c}/{s}")
    if missing:
        raise DatasetError(
            f"{root}: ImageNet-C tree incomplete, missing {missing[:5]}{'...' if len(missing) > 5 else ''} "
            f"(expected <root>/<corruption>/<1-5>/ or <root>/<noise|blur|weather|digital>/<corruption>/<1-5>/)")
    return folders
