"""Semantic segmentation sets in their published layouts, and MMSegmentation's pipelines.

    voc         VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
                ImageSets/Segmentation/{train,val}.txt}; with SegmentationClassAug/ and
                ImageSets/Segmentation/aug.txt present, training uses the augmented set
    cityscapes  leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and
                gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png
    ade20k      ADEChallengeData2016/{images,annotations}/{training,validation}/<name>.{jpg,png};
                label 0 ("other") is ignored and the rest shift down by one

Labels: class indices, 255 ignored. Training: random rescale (ratio 0.5-2.0 of the test
scale), random crop (no class over ``cat_max_ratio`` of it), flip, photometric distortion,
pad; testing: the whole image rescaled to the test scale. Every random choice of a sample
comes from its own seed, so a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from absvit.errors import DatasetError

IGNORE = 255
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")


@dataclass(frozen=True)
class SegSet:
    num_classes: int
    class_names: tuple[str, ...] | None
    splits: dict[str, str]  # train/val -> the set's own split name
    reduce_zero_label: bool = False


DATASETS = {
    "voc": SegSet(21, VOC_CLASSES, {"train": "train", "val": "val"}),
    "cityscapes": SegSet(19, CITYSCAPES_CLASSES, {"train": "train", "val": "val"}),
    "ade20k": SegSet(150, None, {"train": "training", "val": "validation"}, reduce_zero_label=True),
}


def class_names(dataset: str) -> list[str]:
    spec = DATASETS[dataset]
    return list(spec.class_names or (f"class_{i:03d}" for i in range(spec.num_classes)))


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: no such directory (expected {what})")
    return path


def _voc_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    if (root / "VOCdevkit").is_dir():
        root = root / "VOCdevkit"
    if (root / "VOC2012").is_dir():
        root = root / "VOC2012"
    _need_dir(root / "JPEGImages", "VOCdevkit/VOC2012/JPEGImages/ with <id>.jpg")
    lists = root / "ImageSets" / "Segmentation"
    labels = root / "SegmentationClass"
    if split == "train" and (root / "SegmentationClassAug").is_dir():
        aug = next((lists / n for n in ("aug.txt", "trainaug.txt") if (lists / n).is_file()), None)
        if aug is None:
            raise DatasetError(f"{root / 'SegmentationClassAug'} exists but {lists}/aug.txt does not "
                               "(expected the augmented training list next to train.txt)")
        ids, labels = aug.read_text().split(), root / "SegmentationClassAug"
    else:
        listing = lists / f"{split}.txt"
        if not listing.is_file():
            raise DatasetError(f"{listing}: missing (expected the VOC {split} list, one image id per line)")
        ids = listing.read_text().split()
    return [(root / "JPEGImages" / f"{i}.jpg", labels / f"{i}.png") for i in ids]


def _cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    images = _need_dir(root / "leftImg8bit" / split, f"leftImg8bit/{split}/<city>/*_leftImg8bit.png")
    gt = _need_dir(root / "gtFine" / split, f"gtFine/{split}/<city>/*_gtFine_labelTrainIds.png")
    pairs = []
    for image in sorted(images.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        pairs.append((image, gt / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"))
    return pairs


def _ade20k_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    images = _need_dir(root / "images" / split, f"ADEChallengeData2016/images/{split}/*.jpg")
    labels = _need_dir(root / "annotations" / split, f"ADEChallengeData2016/annotations/{split}/*.png")
    return [(image, labels / f"{image.stem}.png") for image in sorted(images.glob("*.jpg"))]


PAIRS = {"voc": _voc_pairs, "cityscapes": _cityscapes_pairs, "ade20k": _ade20k_pairs}


class SegmentationFolder(torch.utils.data.Dataset):
    """(image, label) pairs of one split; ``transform(image, label)`` gets tv_tensors.

    Items are indexed by ``i`` or by ``(i, seed)``: with a seed, the sample's random
    augmentation is drawn from it (and the process's own RNG is left untouched).
    """

    def __init__(self, dataset: str, root, split: str, transform=None):
        if dataset not in DATASETS:
            raise DatasetError(f"unknown segmentation dataset {dataset!r}; expected one of {sorted(DATASETS)}")
        self.dataset, self.spec, self.transform = dataset, DATASETS[dataset], transform
        self.pairs = PAIRS[dataset](Path(root), self.spec.splits[split])
        if not self.pairs:
            raise DatasetError(f"{root}: no {split} images found for {dataset}")
        missing = [str(label) for image, label in self.pairs if not label.is_file()]
        missing += [str(image) for image, _ in self.pairs if not image.is_file()]
        if missing:
            raise DatasetError(f"{root}: {len(missing)} files of the {dataset} {split} split are missing, e.g. {missing[:2]}")

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image_path, label_path = self.pairs[i]
        try:
            with Image.open(image_path) as im:
                image = np.array(im.convert("RGB"))
            with Image.open(label_path) as im:
                label = np.array(im)  # palette PNGs (VOC) give their indices
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(f"{e.filename or image_path}: unreadable image ({e})") from e
        if label.ndim != 2 or label.shape != image.shape[:2]:
            raise DatasetError(f"{label_path}: expected a single-channel label map of size {image.shape[:2]}, "
                               f"got shape {label.shape}")
        label = torch.from_numpy(label.astype(np.int64))
        if self.spec.reduce_zero_label:  # ADE20K: 0 is "other"
            label = torch.where(label == 0, IGNORE + 1, label) - 1
        return tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous()), tv_tensors.Mask(label)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.load(i)
        if self.transform is None:
            return image, label
        if seed is None:
            return self.transform(image, label)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image, label)


def _rescale_size(h: int, w: int, long: float, short: float) -> tuple[int, int]:
    """MMSeg's keep-ratio resize: as large as fits ``long`` x ``short``."""
    scale = min(long / max(h, w), short / min(h, w))
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def _normalize(image: torch.Tensor) -> torch.Tensor:
    return TF.normalize(image.float() / 255, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


class TrainTransform:
    def __init__(self, crop: tuple[int, int], scale: tuple[int, int], ratio: tuple[float, float], cat_max_ratio: float):
        self.crop, self.scale, self.ratio, self.cat_max_ratio = crop, scale, ratio, cat_max_ratio
        self.photometric = v2.RandomPhotometricDistort(p=0.5)

    def _crop_box(self, label: torch.Tensor) -> tuple[int, int]:
        ch, cw = self.crop
        h, w = label.shape[-2:]
        for _ in range(10):  # avoid crops that one class fills almost entirely
            top = int(torch.randint(0, max(h - ch, 0) + 1, ()))
            left = int(torch.randint(0, max(w - cw, 0) + 1, ()))
            window = label[..., top:top + ch, left:left + cw]
            counts = torch.bincount(window[window != IGNORE].flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return top, left

    def __call__(self, image: tv_tensors.Image, label: tv_tensors.Mask):
        r = float(torch.empty(()).uniform_(*self.ratio))
        size = _rescale_size(*image.shape[-2:], self.scale[0] * r, self.scale[1] * r)
        image = TF.resize(image, list(size), antialias=True)
        label = TF.resize(label, list(size), interpolation=v2.InterpolationMode.NEAREST)
        top, left = self._crop_box(label)
        image = TF.crop(image, top, left, *self.crop)
        label = TF.crop(label, top, left, *self.crop)
        if torch.rand(()) < 0.5:
            image, label = TF.horizontal_flip(image), TF.horizontal_flip(label)
        image = self.photometric(image)
        pad = [0, 0, self.crop[1] - image.shape[-1], self.crop[0] - image.shape[-2]]
        if pad[2] > 0 or pad[3] > 0:
            image = TF.pad(image, pad, fill=0)
            label = TF.pad(label, pad, fill=IGNORE)
        return _normalize(image), label.as_subclass(torch.Tensor).long()


class TestTransform:
    """The whole image at the test scale; the label stays at full size."""

    def __init__(self, scale: tuple[int, int]):
        self.scale = scale

    def __call__(self, image: tv_tensors.Image, label: tv_tensors.Mask):
        size = _rescale_size(*image.shape[-2:], *self.scale)
        return _normalize(TF.resize(image, list(size), antialias=True)), label.as_subclass(torch.Tensor).long()
