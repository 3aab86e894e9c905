"""The two V&L tasks, each its data, its model head and objective, and its evaluation:

- ``VQATask``: VQAv2 (train2014, or train + val with ``trainval``); the official VQA accuracy on val2014, or the
  test-dev submission JSON for the evaluation server with ``trainval``.
- ``RetrievalTask``: Flickr30k's Karpathy split, trained on train (+ val with ``trainval``, as the official code);
  every (image, text) pair of the test split scored, image->text and text->image recall@1/5/10.

``absvit.vl.finetune`` runs either the same way (``engine.train_one_epoch``, ``engine.evaluate``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from absvit import engine
from absvit.digests import digest
from absvit.progress import Progress
from absvit.vl.recipe import VLRecipe
from absvit.vl.answers import majority_baseline, vqa_accuracy
from absvit.vl.datasets import CaptionDataset, ImageDataset, TextDataset, VQADataset
from absvit.vl.records import retrieval_splits, vqa_splits
from absvit.vl.fusion import METER
from absvit.vl.model import ITMHead, RankHead, RetrievalObjective, VQAHead, VQAObjective, recall_at_k
from absvit.vl.transforms import vl_transform


def run_inputs(root, encoder, text_encoder, **extra) -> dict:
    """What a V&L job reads, by content (``absvit.digests``): the encoder's file, the text encoder's folder (weights
    and tokenizer), the data folder (annotation and split files whole, images by name and size), and ``extra``."""
    return {"encoder": digest(encoder), "text_encoder": digest(text_encoder, full_tree=True), "data": digest(root),
            **extra}


class AsPairs(torch.utils.data.Dataset):
    """A dataset of dicts as ``(inputs, target)`` for the engine's loops: the ``inputs`` keys as a tuple, then the
    ``target`` key's tensor (the sample's index where the task has no target)."""

    def __init__(self, dataset, inputs: tuple[str, ...], target: str = "index"):
        self.dataset, self.inputs, self.target = dataset, inputs, target

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return tuple(item[k] for k in self.inputs), item[self.target]


class VQAAnswers:
    """``engine.evaluate``'s metric of VQA: each question's predicted answer (the logits' argmax), kept on the device
    and read once; ``compute`` gives the official accuracy against the 10 annotators' answers."""

    def __init__(self, records, vocab: list[str]):
        self.records, self.vocab, self.picks, self.indices = records, vocab, [], []

    def update(self, logits: torch.Tensor, indices: torch.Tensor) -> None:
        self.picks.append(logits.argmax(-1))
        self.indices.append(indices)

    def predictions(self) -> dict[int, str]:
        """question index -> answer."""
        picks, indices = torch.cat(self.picks).tolist(), torch.cat(self.indices).tolist()  # the one host sync
        return {i: self.vocab[p] for i, p in zip(indices, picks)}

    def compute(self) -> dict:
        predicted = self.predictions()
        scores = [vqa_accuracy(predicted[i], self.records[i].answers) for i in sorted(predicted)]
        return {"vqa_accuracy": 100.0 * sum(scores) / max(len(scores), 1), "questions": len(scores)}


def without_images(inputs):
    """VQA inputs with every image replaced by the normalised mean image (all zeros): what the model answers from
    the question alone (the image-blind control beside the accuracy)."""
    images, *texts = inputs
    return (torch.zeros_like(images), *texts)


class VQATask:
    name, prior_kind = "vqa", "mean"
    inputs = ("image", "input_ids", "attention_mask")

    def __init__(self, root, recipe: VLRecipe, tokenizer, *, leave_out=frozenset()):
        self.root = Path(root)
        fitted, self.eval_split, self.eval_records, self.vocab = vqa_splits(root, recipe, leave_out)
        self.train = VQADataset(fitted, self.vocab, tokenizer, vl_transform(recipe.img_size, True), recipe.max_text_len)
        self.eval_set = VQADataset(self.eval_records, self.vocab, tokenizer, vl_transform(recipe.img_size, False),
                                   recipe.max_text_len)
        self.tokenizer, self.recipe = tokenizer, recipe
        self.described = {"vocab": self.vocab, "train_questions": len(fitted),
                          "train_splits": "train2014 + val2014" if recipe.trainval else "train2014"}

    def images(self) -> set[str]:
        """Every image the job reads."""
        return {str(r.image) for r in self.train.records + self.eval_records}

    def train_pairs(self):
        return AsPairs(self.train, self.inputs, "targets")

    def run_inputs(self, encoder, text_encoder) -> dict:
        """``run_inputs`` of this task, with the answer vocabulary."""
        vocab = hashlib.sha256(json.dumps(self.vocab).encode()).hexdigest()
        return run_inputs(self.root, encoder, text_encoder, vocab=f"sha256:{vocab}")

    def objective(self, meter: METER) -> VQAObjective:
        r = self.recipe
        return VQAObjective(meter, VQAHead(2 * r.hidden, len(self.vocab)), var_weight=r.var_weight,
                            prior_loss=r.prior_loss, prior_weight=r.prior_weight)

    def evaluate(self, objective: VQAObjective, device, *, workers: int, every_s: float) -> dict:
        """The official accuracy on val2014, the majority-answer baseline and the image-blind control (the same model
        on the same questions with every image blanked: ``blind_accuracy``); with ``trainval``, the test-dev
        predictions (``submission``)."""
        loader = torch.utils.data.DataLoader(AsPairs(self.eval_set, self.inputs), batch_size=self.recipe.eval_batch_size,
                                             num_workers=workers)
        metric = VQAAnswers(self.eval_records, self.vocab)
        engine.evaluate(objective, loader, device, metric, forward=lambda m, inputs, _: m.logits(inputs),
                        progress=Progress(f"Test: [vqa {self.eval_split}]", len(loader), every_s=every_s, device=device))
        if self.recipe.trainval:
            predicted = metric.predictions()
            return {"split": self.eval_split, "questions": len(predicted),
                    "submission": [{"question_id": self.eval_records[i].question_id, "answer": a}
                                   for i, a in sorted(predicted.items())]}
        answer, baseline = majority_baseline([r.multiple_choice_answer for r in self.train.records],
                                             [r.answers for r in self.eval_records])
        blind = VQAAnswers(self.eval_records, self.vocab)
        engine.evaluate(objective, loader, device, blind, forward=lambda m, inputs, _: m.logits(without_images(inputs)),
                        progress=Progress(f"Test: [vqa {self.eval_split}, image-blind]", len(loader), every_s=every_s,
                                          device=device))
        return {"split": self.eval_split, **metric.compute(), "majority_answer": answer, "majority_baseline": baseline,
                "blind_accuracy": blind.compute()["vqa_accuracy"]}


class PairScores:
    """``engine.evaluate``'s metric of retrieval: the score of each (image, text) pair into an (images, texts) matrix."""

    def __init__(self, images: int, texts: int):
        self.scores = torch.full((images, texts), float("nan"))

    def update(self, scores: torch.Tensor, pairs: torch.Tensor) -> None:
        pairs = pairs.cpu()
        self.scores[pairs[:, 0], pairs[:, 1]] = scores.float().cpu()


class AllPairs(torch.utils.data.Dataset):
    """Every (image, text) pair of a split, from preloaded image tensors and token ids: ((image, ids, mask), (i, j))."""

    def __init__(self, images: torch.Tensor, ids: torch.Tensor, masks: torch.Tensor):
        self.images, self.ids, self.masks = images, ids, masks

    def __len__(self) -> int:
        return len(self.images) * len(self.ids)

    def __getitem__(self, index: int):
        i, j = divmod(index, len(self.ids))
        return (self.images[i], self.ids[j], self.masks[j]), torch.tensor([i, j])


class RetrievalTask:
    name, prior_kind = "retrieval", "eos"
    inputs = ("image", "input_ids", "attention_mask", "negative_input_ids", "negative_attention_mask")

    def __init__(self, root, recipe: VLRecipe, tokenizer, *, leave_out=frozenset()):
        self.root = Path(root)
        train, self.test = retrieval_splits(root, recipe, leave_out)
        self.train = CaptionDataset(train, tokenizer, vl_transform(recipe.img_size, True), negatives=recipe.negatives,
                                    seed=recipe.seed, max_len=recipe.max_text_len)
        self.tokenizer, self.recipe = tokenizer, recipe
        self.described = {"train_images": len(train), "train_captions": len(self.train),
                          "train_splits": "train + val" if recipe.trainval else "train"}

    def train_pairs(self):
        return AsPairs(self.train, self.inputs)

    def images(self) -> set[str]:
        """Every image the job reads."""
        return {str(r.image) for r in self.train.records + self.test}

    def run_inputs(self, encoder, text_encoder) -> dict:
        return run_inputs(self.root, encoder, text_encoder)

    def objective(self, meter: METER) -> RetrievalObjective:
        r = self.recipe
        itm = ITMHead(2 * r.hidden)
        return RetrievalObjective(meter, itm, RankHead(2 * r.hidden, itm=itm), negatives=r.negatives,
                                  itm_weight=r.itm_weight, var_weight=r.var_weight, prior_loss=r.prior_loss,
                                  prior_weight=r.prior_weight)

    def evaluate(self, objective: RetrievalObjective, device, *, workers: int, every_s: float) -> dict:
        """Scores every (image, text) pair of the test split with the rank head (AbSViT's visual tokens depend on
        the text: no cache), then recall@k both ways."""
        images = torch.stack([d["image"] for d in ImageDataset(self.test, vl_transform(self.recipe.img_size, False))])
        texts = TextDataset(self.test, self.tokenizer, self.recipe.max_text_len)
        ids = torch.stack([texts[j]["input_ids"] for j in range(len(texts))])
        masks = torch.stack([texts[j]["attention_mask"] for j in range(len(texts))])
        loader = torch.utils.data.DataLoader(AllPairs(images, ids, masks), batch_size=self.recipe.eval_batch_size,
                                             num_workers=workers)
        metric = PairScores(len(images), len(ids))
        engine.evaluate(objective, loader, device, metric, forward=lambda m, inputs, _: m.score(*inputs),
                        progress=Progress("Test: [retrieval test]", len(loader), every_s=every_s, device=device))
        text_image = torch.tensor([image for image, _ in texts.samples])
        return {"split": "test", "images": len(images), "texts": len(ids),
                **recall_at_k(metric.scores, text_image), "chance_r1": 100.0 / len(images)}  # R@1 both ways by chance


TASKS = {"vqa": VQATask, "retrieval": RetrievalTask}
