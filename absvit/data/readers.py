"""Readers for ImageNet and its robustness sets in their published folder layouts.

Labels always live in one *label space*: the classifier's classes in ImageNet's sorted wnid
order (``imagenet-1k``, from timm's copy of the list), or the sorted class folders of a
training set (the embedded default). A folder of an evaluation set maps each ``<wnid>/``
into that space; ImageNet-A and -R hold 200 of the 1000 classes, and their logits are
restricted to those classes' indices before the argmax.

A label space smaller than ImageNet's (an ImageNet-100 study, a subset to try the pipeline) is
evaluated on the folders of its own classes: a set's folders of other ImageNet classes are
skipped and counted (``ClassFolder.skipped``), so that IN-C / IN-Sketch (all 1000 classes) and
IN-A / IN-R (200) still evaluate such a model; ``select_classes`` is the one rule, used by the
readers and by the pipeline before it builds the DAG.
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


def imagenet_wnids() -> frozenset[str]:
    """The 1000 ImageNet-1k wnids (timm's copy of the list)."""
    return frozenset(label_space("imagenet-1k"))


def select_classes(names, classes: list[str], *, subset: bool, where) -> tuple[list[str], list[str]]:
    """Which class folders ``names`` of the evaluation set ``where`` are evaluated in the label space
    ``classes``, and which are skipped: ``(evaluated, skipped)``.

    A folder outside the label space is skipped only when the label space is part of ImageNet-1k and
    the folder is another ImageNet class (a model trained on some of ImageNet's classes); any other is
    an error. ``subset=False`` (val, IN-C, IN-Sketch): every class of the label space must be there;
    ``subset=True`` (IN-A, IN-R): at least one."""
    space = set(classes)
    evaluated = sorted(n for n in names if n in space)
    others = sorted(n for n in names if n not in space)
    if others:
        wnids = imagenet_wnids()
        if not (space < wnids and set(others) <= wnids):
            bad = next(n for n in others if n not in wnids or not space < wnids)
            raise DatasetError(
                f"{Path(where) / bad}: class '{bad}' is not in the label space of {len(classes)} classes "
                f"(expected one of {sorted(classes)[:3]}...; does the checkpoint's head match this dataset?)")
    if subset and not evaluated:
        raise DatasetError(f"{where}: none of its {len(names)} class folders is a class of the label space of "
                           f"{len(classes)} classes (e.g. {sorted(classes)[:3]}); nothing to evaluate")
    missing = sorted(space - set(evaluated))
    if missing and not subset:
        raise DatasetError(
            f"{where}: {len(missing)} of the {len(classes)} classes are missing (e.g. {missing[:3]}); "
            "this set must hold every class of the label space")
    return evaluated, others


def class_folder_names(root) -> list[str]:
    """The class folders' names of an evaluation set (``<root>/<wnid>/``)."""
    return [p.name for p in _class_dirs(Path(root))]


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
        folders = {p.name: p for p in _class_dirs(self.root)}
        evaluated, self.skipped = select_classes(list(folders), classes, subset=subset, where=self.root)
        self.samples: list[tuple[Path, int]] = []
        for name in evaluated:
            files = sorted(f for f in folders[name].iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DatasetError(f"{folders[name]}: empty class folder (expected image files such as *.JPEG)")
            self.samples += [(f, index[name]) for f in files]
        self.class_indices = sorted(index[name] for name in evaluated)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        image = read_rgb(path)
        return (self.transform(image) if self.transform else image), label


def read_rgb(path) -> Image.Image:
    """The image at ``path``, decoded, in RGB; an unreadable one (missing, not an image, truncated) is a
    DatasetError naming the path."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # PIL's decoders raise all of these
        raise DatasetError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None


def unreadable_images(paths, *, threads: int = 8) -> dict[str, str]:
    """The images of ``paths`` that do not decode, each with why (``read_rgb``'s message): every image decoded once,
    on ``threads`` threads (PIL's decoders release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def problem(path):
        try:
            read_rgb(path)
        except DatasetError as e:
            return str(e)
        return None

    paths = sorted({str(p) for p in paths})
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return {p: why for p, why in zip(paths, pool.map(problem, paths)) if why}


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


SUBSET_SUITES = ("imagenet-a", "imagenet-r")  # 200 of the 1000 classes; logits restricted to those present


def suite_problems(suite: str, root, classes: list[str]) -> list[str]:
    """Why ``root`` cannot be evaluated as ``suite`` in the label space ``classes`` (empty: it can).

    Reads folder names only (no image, no torch): the pipeline calls it for every evaluated run before it
    builds the DAG, so that a label-space mismatch is one line at planning time, not an error after
    pretraining."""
    try:
        folders = imagenet_c_folders(root).values() if suite == "imagenet-c" else [Path(root)]
        for folder in folders:
            select_classes(class_folder_names(folder), classes, subset=suite in SUBSET_SUITES, where=folder)
    except DatasetError as e:
        return [str(e)]
    return []
