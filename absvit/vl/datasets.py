"""The torch datasets that V&L fine-tuning and evaluation read VQAv2 and Flickr30k through, from the records of
``absvit.vl.records``.

The datasets return dicts of tensors of fixed shapes (texts are padded to ``max_len``), so torch's
``default_collate`` batches them; an image that does not decode is a DatasetError naming it (``read_rgb``).
"""
from __future__ import annotations

import numpy as np
import torch

from absvit.data.readers import read_rgb
from absvit.errors import DatasetError
from absvit.vl.answers import soft_targets
from absvit.vl.records import MAX_TEXT_LEN, NEGATIVES, CaptionRecord, VQARecord


def tokenize(tokenizer, texts, max_len: int = MAX_TEXT_LEN) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``texts`` (a string: shape (max_len,); a list: (n, max_len))."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    single = isinstance(texts, str)
    return {k: enc[k][0] if single else enc[k] for k in ("input_ids", "attention_mask")}


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
        return {"image": self.transform(read_rgb(record.image)),
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
        return {"image": self.transform(read_rgb(record.image)),
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
        return {"image": self.transform(read_rgb(self.records[index].image)), "index": torch.tensor(index)}


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
