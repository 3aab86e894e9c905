"""VQAv2 and Flickr30k (Karpathy split) in their published layouts: readers of plain records, and the torch
datasets that fine-tuning and evaluation read them through.

Every problem a reader finds raises ``DatasetError`` with one line naming the file and what was expected.
The datasets return dicts of tensors of fixed shapes (texts are padded to ``max_len``), so torch's
``default_collate`` batches them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from absvit.errors import DatasetError
from absvit.vl.answers import soft_targets

MAX_TEXT_LEN = 50
NEGATIVES = 15
KARPATHY_FILE = "dataset_flickr30k.json"
KARPATHY_IMAGES = "flickr30k-images"
KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}

VQA_LAYOUT = ("VQAv2: v2_OpenEnded_mscoco_<split>_questions.json and v2_mscoco_<split>_annotations.json "
              "(no annotations for test splits) with images <split>/COCO_<split>_<12-digit image id>.jpg "
              "(test-dev2015's in test2015/), for split train2014, val2014 or test-dev2015")
KARPATHY_LAYOUT = (f"Flickr30k, Karpathy split: {KARPATHY_FILE} (images: filename, imgid, split train/restval/val/"
                   f"test, sentences: raw) and {KARPATHY_IMAGES}/<filename>")


@dataclass(frozen=True)
class VQARecord:
    image: Path
    image_id: int
    question_id: int
    question: str
    answers: tuple[str, ...]  # the annotators' raw answers (ten in VQAv2); empty for a test split
    multiple_choice_answer: str  # the most common raw answer; empty for a test split


@dataclass(frozen=True)
class CaptionRecord:
    image: Path
    image_id: int
    captions: tuple[str, ...]  # the raw sentences (five in Flickr30k)


def is_test_split(split: str) -> bool:
    """VQA's test splits (test2015, test-dev2015) publish questions only."""
    return split.startswith("test")


def vqa_image_folder(split: str) -> str:
    """The folder of a VQA split's images: test-dev2015 is a subset of test2015 and shares its images."""
    return "test2015" if is_test_split(split) else split


def load_json(path: Path, key: str) -> list:
    """The list under ``key`` of the JSON file ``path``."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (expected a JSON file with a list '{key}')")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e}; expected an object with a list '{key}')") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DatasetError(f"{path}: no list '{key}' at the top (expected an object with a list '{key}')")
    return data[key]


def fields(entry, keys: tuple[str, ...], path: Path, key: str, n: int) -> tuple:
    """The values of ``keys`` in entry ``n`` of the list ``key`` of ``path``."""
    missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
    if missing:
        raise DatasetError(f"{path}: {key}[{n}] lacks {', '.join(missing)} (expected an object with "
                           f"{', '.join(keys)})")
    return tuple(entry[k] for k in keys)


def check_image(path: Path, where: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path}: no such image (named by {where})")
    return path


def read_vqa(root, split: str) -> list[VQARecord]:
    """The questions of VQA split ``split`` (train2014, val2014, test-dev2015, ...) under ``root`` (``VQA_LAYOUT``),
    in the questions file's order. Images are checked to exist, not decoded."""
    root = Path(root)
    qfile = root / f"v2_OpenEnded_mscoco_{split}_questions.json"
    questions = load_json(qfile, "questions")
    annotations: dict[int, tuple] = {}
    if not is_test_split(split):
        afile = root / f"v2_mscoco_{split}_annotations.json"
        for n, entry in enumerate(load_json(afile, "annotations")):
            qid, answers, mc = fields(entry, ("question_id", "answers", "multiple_choice_answer"), afile,
                                      "annotations", n)
            if not isinstance(answers, list) or not answers or not all(isinstance(a, dict) and "answer" in a
                                                                       for a in answers):
                raise DatasetError(f"{afile}: annotations[{n}] (question_id {qid}) has no usable answers "
                                   "(expected a list of objects with 'answer')")
            annotations[qid] = (tuple(a["answer"] for a in answers), mc)
    folder = root / vqa_image_folder(split)
    images: set[int] = set()
    records = []
    for n, entry in enumerate(questions):
        qid, image_id, question = fields(entry, ("question_id", "image_id", "question"), qfile, "questions", n)
        if not isinstance(image_id, int):
            raise DatasetError(f"{qfile}: questions[{n}] has image_id {image_id!r} (expected an integer)")
        if not is_test_split(split) and qid not in annotations:
            raise DatasetError(f"{root / f'v2_mscoco_{split}_annotations.json'}: no annotation for question_id "
                               f"{qid} (expected one per question of {qfile.name})")
        image = folder / f"COCO_{vqa_image_folder(split)}_{image_id:012d}.jpg"
        if image_id not in images:
            check_image(image, f"question_id {qid} of {qfile}")
            images.add(image_id)
        answers, mc = annotations.get(qid, ((), ""))
        records.append(VQARecord(image, image_id, qid, question, answers, mc))
    return records


def read_karpathy(root, split: str) -> list[CaptionRecord]:
    """The images of Karpathy split ``split`` (train, which includes restval; val; test) of the Flickr30k
    folder ``root`` (``KARPATHY_LAYOUT``), in the file's order, with their raw captions."""
    if split not in KARPATHY_SPLITS:
        raise DatasetError(f"Karpathy split {split!r}: unknown (expected one of {', '.join(KARPATHY_SPLITS)})")
    root = Path(root)
    path = root / KARPATHY_FILE
    records = []
    for n, entry in enumerate(load_json(path, "images")):
        filename, imgid, part, sentences = fields(entry, ("filename", "imgid", "split", "sentences"), path,
                                                  "images", n)
        if part not in KARPATHY_SPLITS["train"] + KARPATHY_SPLITS["val"] + KARPATHY_SPLITS["test"]:
            raise DatasetError(f"{path}: images[{n}] ({filename}) has split {part!r} "
                               "(expected train, restval, val or test)")
        if part not in KARPATHY_SPLITS[split]:
            continue
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, dict) and "raw" in s
                                                                       for s in sentences):
            raise DatasetError(f"{path}: images[{n}] ({filename}) has no usable sentences "
                               "(expected a list of objects with 'raw')")
        image = check_image(root / KARPATHY_IMAGES / filename, f"images[{n}] of {path}")
        records.append(CaptionRecord(image, int(imgid), tuple(s["raw"] for s in sentences)))
    return records


def tokenize(tokenizer, texts, max_len: int = MAX_TEXT_LEN) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``texts`` (a string: shape (max_len,); a list: (n, max_len))."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    single = isinstance(texts, str)
    return {k: enc[k][0] if single else enc[k] for k in ("input_ids", "attention_mask")}


def load_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


class VQADataset(torch.utils.data.Dataset):
    """VQA questions as {"image", "input_ids", "attention_mask", "targets", "index"}: ``targets`` holds the soft
    scores over the answer vocabulary ``vocab`` (float, (len(vocab),); zeros for a test split)."""

    def __init__(self, records: list[VQARecord], vocab: list[str], tokenizer, transform, max_len: int = MAX_TEXT_LEN):
        self.records, self.vocab, self.tokenizer, self.transform = records, vocab, tokenizer, transform
        self.max_len = max_len
        self.index = {a: i for i, a in enumerate(vocab)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        targets = torch.zeros(len(self.vocab))
        labels, scores = soft_targets(record.answers, self.index)
        targets[labels] = torch.tensor(scores)
        return {"image": self.transform(load_image(record.image)),
                **tokenize(self.tokenizer, record.question, self.max_len), "targets": targets,
                "index": torch.tensor(index)}


class CaptionDataset(torch.utils.data.Dataset):
    """Retrieval training: one sample per caption, {"image", "input_ids", "attention_mask", "negative_input_ids",
    "negative_attention_mask", "index"}, the negatives ((negatives, max_len)) being one caption each of other images.

    The negatives are drawn under a generator seeded with (seed, epoch, index): call ``set_epoch`` at each epoch,
    and a resumed run draws what the uninterrupted one drew. Images are drawn without repetition when there are
    enough of them.
    """

    def __init__(self, records: list[CaptionRecord], tokenizer, transform, *, negatives: int = NEGATIVES,
                 seed: int = 0, max_len: int = MAX_TEXT_LEN):
        if len(records) < 2 and negatives:
            raise DatasetError(f"a caption set of {len(records)} image(s) cannot give negatives "
                               "(expected at least two images)")
        self.records, self.tokenizer, self.transform, self.max_len = records, tokenizer, transform, max_len
        self.negatives, self.seed, self.epoch = negatives, seed, 0
        self.samples = [(i, k) for i, r in enumerate(records) for k in range(len(r.captions))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def negative_pairs(self, index: int) -> list[tuple[int, int]]:
        """The negatives of sample ``index`` in the current epoch, as (image, caption) places in the records."""
        image, _ = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        others = len(self.records) - 1
        picks = rng.choice(others, size=self.negatives, replace=self.negatives > others)
        picks = [int(j) + (j >= image) for j in picks]  # skip the positive's image
        return [(j, int(rng.integers(len(self.records[j].captions)))) for j in picks]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, caption = self.samples[index]
        record = self.records[image]
        texts = [self.records[j].captions[k] for j, k in self.negative_pairs(index)]
        negatives = tokenize(self.tokenizer, texts, self.max_len)
        return {"image": self.transform(load_image(record.image)),
                **tokenize(self.tokenizer, record.captions[caption], self.max_len),
                "negative_input_ids": negatives["input_ids"], "negative_attention_mask": negatives["attention_mask"],
                "index": torch.tensor(index)}


class ImageDataset(torch.utils.data.Dataset):
    """Retrieval evaluation, the image side: {"image", "index"} for each record (image) of a split."""

    def __init__(self, records: list[CaptionRecord], transform):
        self.records, self.transform = records, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.transform(load_image(self.records[index].image)), "index": torch.tensor(index)}


class TextDataset(torch.utils.data.Dataset):
    """Retrieval evaluation, the text side: {"input_ids", "attention_mask", "image_index", "index"} for every caption
    of a split, ``image_index`` being its image's place in ``records`` (the ground truth of both directions)."""

    def __init__(self, records: list[CaptionRecord], tokenizer, max_len: int = MAX_TEXT_LEN):
        self.records, self.tokenizer, self.max_len = records, tokenizer, max_len
        self.samples = [(i, caption) for i, r in enumerate(records) for caption in r.captions]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, caption = self.samples[index]
        return {**tokenize(self.tokenizer, caption, self.max_len), "image_index": torch.tensor(image),
                "index": torch.tensor(index)}
