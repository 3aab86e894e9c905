"""The V&L stage's embedded default: generated scenes with questions and captions in the VQAv2 and Flickr30k
(Karpathy) layouts, and a small randomly initialised RoBERTa saved as ``roberta-base`` is.

The scenes are the figures' multi-object scenes (``absvit.data.scenes.draw_scene``): two or three objects of
different shape classes, each in a different named colour of ``PALETTE``. Every scene gets questions that name
one of its objects, or none:

    what colour is the <shape>?        -> the object's colour name
    what shape is the <colour> object? -> the object's shape name
    is there a <shape>?                -> yes (a shape in the scene) / no (one that is not)
    how many objects are there?        -> 2 / 3

Each question has ten annotators' answers, mostly right; each annotator gives another answer of the same kind
with probability ``DISAGREE``, so that the soft scores are not all 1.0. Everything is drawn from per-scene
generators seeded with (seed, split, scene): the bytes depend on those only.

Layout written by ``generate_vl(root)``::

    <root>/vqa/             VQAv2: train2014 (train scenes), val2014 (val scenes), test-dev2015 (test scenes,
                            questions only, images in test2015/), absvit.vl.records.VQA_LAYOUT
    <root>/vqa/figure5.csv  Figure 5: each val question naming one object, with that object's mask
    <root>/vqa/masks/*.png  the val objects' masks (255 = the object)
    <root>/flickr30k/       Karpathy split: five captions per scene, train / val / test (KARPATHY_LAYOUT)
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from absvit.data.scenes import draw_scene
from absvit.data.shapes import SHAPE_WORDS, SHAPES
from absvit.io import atomic_dir, write_json
from absvit.vl.records import (KARPATHY_FILE, KARPATHY_IMAGES, MAX_TEXT_LEN, is_test_split,
                                read_karpathy, read_vqa, vqa_image_folder)

VL_SCENES = 8  # seeds the V&L scenes apart from the figures' (scenes.SCENE_SPLIT) and the classification splits
SPLITS = ("train", "val", "test")
VQA_SPLITS = {"train": "train2014", "val": "val2014", "test": "test-dev2015"}
DEFAULT_COUNTS = {"train": 48, "val": 16, "test": 16}
PALETTE = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 210), "yellow": (230, 200, 40),
           "purple": (140, 60, 180)}
COUNT_WORDS = {2: "two", 3: "three"}
ANNOTATORS = 10
DISAGREE = 0.1
IMAGE_IDS = 1_000_000  # image ids: 1_000_000 * (split number + 1) + scene number (independent of the counts)
FIGURE5_COLUMNS = ("question_id", "question", "image", "mask", "class_index")
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's ids 0-4


@dataclass
class VLScene:
    split: str
    index: int  # the scene's number in its split
    classes: list[int]
    colours: list[str]
    image: Image.Image
    masks: list[np.ndarray]

    @property
    def image_id(self) -> int:
        return IMAGE_IDS * (SPLITS.index(self.split) + 1) + self.index

    @property
    def shapes(self) -> list[str]:
        """The objects' shapes as a person writes them ("L shape")."""
        return [SHAPE_WORDS[SHAPES[c]] for c in self.classes]


@dataclass
class Question:
    question: str
    answer: str
    kind: str  # colour | shape | exists | count
    obj: int | None  # the object the question names (colour / shape questions), else None

    @property
    def question_type(self) -> str:
        """VQA's question type: the question's opening words."""
        return {"colour": "what colour is the", "shape": "what shape is the", "exists": "is there a",
                "count": "how many"}[self.kind]

    @property
    def answer_type(self) -> str:
        return {"exists": "yes/no", "count": "number"}.get(self.kind, "other")


def draw_vl_scene(seed: int, split: str, i: int, size: int) -> VLScene:
    """Scene ``i`` of ``split``: 2-3 objects of distinct classes in distinct palette colours."""
    rng = np.random.default_rng([seed, VL_SCENES, SPLITS.index(split), i])
    n = int(rng.integers(2, 4))
    classes = [int(c) for c in rng.choice(len(SHAPES), size=n, replace=False)]
    colours = [list(PALETTE)[int(c)] for c in rng.choice(len(PALETTE), size=n, replace=False)]
    image, masks = draw_scene(rng, size, classes, colours=[PALETTE[c] for c in colours])
    return VLScene(split, i, classes, colours, image, masks)


def scene_questions(scene: VLScene, rng: np.random.Generator) -> list[Question]:
    """The scene's questions: colour and shape of each object, one present and one absent shape, the count."""
    shapes, named = scene.shapes, list(enumerate(zip(scene.shapes, scene.colours)))
    out = [Question(f"what colour is the {s}?", c, "colour", k) for k, (s, c) in named]
    out += [Question(f"what shape is the {c} object?", s, "shape", k) for k, (s, c) in named]
    absent = [s for s in SHAPE_WORDS.values() if s not in shapes]
    present, missing = shapes[int(rng.integers(len(shapes)))], absent[int(rng.integers(len(absent)))]
    out.append(Question(f"is there {article(present)} {present}?", "yes", "exists", None))
    out.append(Question(f"is there {article(missing)} {missing}?", "no", "exists", None))
    out.append(Question("how many objects are there?", str(len(shapes)), "count", None))
    return out


def annotators(question: Question, rng: np.random.Generator) -> list[str]:
    """Ten answers to ``question``: each the right one, or with probability ``DISAGREE`` another of its kind."""
    choices = {"colour": list(PALETTE), "shape": list(SHAPE_WORDS.values()), "exists": ["yes", "no"],
               "count": ["1", "2", "3", "4"]}
    wrong = [a for a in choices[question.kind] if a != question.answer]
    return [wrong[int(rng.integers(len(wrong)))] if rng.random() < DISAGREE else question.answer
            for _ in range(ANNOTATORS)]


def majority(answers: list[str], truth: str) -> str:
    """The most common answer (VQA's ``multiple_choice_answer``); a tie goes to the right one, then alphabetically."""
    return max(sorted(set(answers)), key=lambda a: (answers.count(a), a == truth))


def article(words: str) -> str:
    """'a' or 'an' before ``words`` ("an L shape", "a red ring")."""
    return "an" if words[0] in "aeiouAEIOU" or words.startswith("L ") else "a"


def listing(items: list[str]) -> str:
    """'a x', 'a x and a y', 'a x, a y and an L shape'."""
    items = [f"{article(item)} {item}" for item in items]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def scene_captions(scene: VLScene, rng: np.random.Generator) -> list[str]:
    """Five captions of the scene, in different words and object orders."""
    objects = [f"{c} {s}" for c, s in zip(scene.colours, scene.shapes)]
    shuffled = [objects[k] for k in rng.permutation(len(objects))]
    first = int(rng.integers(len(objects)))
    return [listing(objects),
            f"{listing(objects[::-1])} on a cluttered background",
            f"{COUNT_WORDS[len(objects)]} shapes: {listing(scene.shapes)}",
            f"a picture of {listing(shuffled)}",
            f"{article(objects[first])} {objects[first]} next to {listing(objects[:first] + objects[first + 1:])}"]


def vqa_entries(scene: VLScene, seed: int) -> tuple[list[Question], list[dict], list[dict]]:
    """The scene's questions, and their entries in the VQAv2 questions and annotations files."""
    rng = np.random.default_rng([seed, VL_SCENES, SPLITS.index(scene.split), scene.index, 1])
    questions = scene_questions(scene, rng)
    qs, anns = [], []
    for q, question in enumerate(questions):
        qid = scene.image_id * 100 + q  # at most 9 questions a scene
        answers = annotators(question, rng)
        qs.append({"image_id": scene.image_id, "question": question.question, "question_id": qid})
        anns.append({"question_id": qid, "image_id": scene.image_id, "question_type": question.question_type,
                     "answer_type": question.answer_type, "multiple_choice_answer": majority(answers, question.answer),
                     "answers": [{"answer": a, "answer_confidence": "yes" if a == question.answer else "maybe",
                                  "answer_id": k + 1} for k, a in enumerate(answers)]})
    return questions, qs, anns


def karpathy_entry(scene: VLScene, seed: int, imgid: int) -> dict:
    rng = np.random.default_rng([seed, VL_SCENES, SPLITS.index(scene.split), scene.index, 2])
    sentences = [{"raw": raw, "tokens": re.findall(r"[a-z0-9]+", raw.lower()), "imgid": imgid,
                  "sentid": imgid * 5 + k} for k, raw in enumerate(scene_captions(scene, rng))]
    return {"filename": f"{scene.image_id}.jpg", "imgid": imgid, "split": scene.split,
            "sentids": [s["sentid"] for s in sentences], "sentences": sentences}


def write_figure5(vqa: Path, scene: VLScene, image: str, questions: list[Question], qs: list[dict]) -> list[dict]:
    """Write the masks of a val scene's objects; its Figure 5 rows (the questions that name one object)."""
    (vqa / "masks").mkdir(exist_ok=True)
    for k, mask in enumerate(scene.masks):
        Image.fromarray(np.uint8(mask) * 255).save(vqa / "masks" / f"{scene.image_id:012d}_{k}.png")
    return [{"question_id": entry["question_id"], "question": question.question, "image": image,
             "mask": f"masks/{scene.image_id:012d}_{question.obj}.png", "class_index": scene.classes[question.obj]}
            for question, entry in zip(questions, qs) if question.obj is not None]


def generate_vl(root, *, seed: int = 0, size: int = 64, counts: dict[str, int] | None = None,
                quality: int = 90) -> dict[str, Path]:
    """Write the embedded V&L data under ``root`` (replaced whole, renamed into place when complete; see the
    module's docstring for the layout). ``counts``: scenes per split (train, val, test), ``DEFAULT_COUNTS`` by
    default. Returns the paths {"vqa": folder, "flickr30k": folder, "figure5": manifest}."""
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown or any(counts[s] < 2 for s in SPLITS):
        raise ValueError(f"generate_vl: counts {counts} (expected at least 2 scenes for each of {', '.join(SPLITS)})")
    root = Path(root)
    with atomic_dir(root) as tmp:
        vqa, flickr = tmp / "vqa", tmp / "flickr30k"
        (flickr / KARPATHY_IMAGES).mkdir(parents=True)
        images, figure5 = [], []
        for split in SPLITS:
            folder = vqa_image_folder(VQA_SPLITS[split])
            (vqa / folder).mkdir(parents=True)
            questions, annotations = [], []
            for i in range(counts[split]):
                scene = draw_vl_scene(seed, split, i, size)
                image = f"{folder}/COCO_{folder}_{scene.image_id:012d}.jpg"
                scene.image.save(vqa / image, quality=quality)
                scene.image.save(flickr / KARPATHY_IMAGES / f"{scene.image_id}.jpg", quality=quality)
                asked, qs, anns = vqa_entries(scene, seed)
                questions += qs
                annotations += anns
                images.append(karpathy_entry(scene, seed, len(images)))
                if split == "val":
                    figure5 += write_figure5(vqa, scene, image, asked, qs)
            write_vqa_files(vqa, VQA_SPLITS[split], questions, annotations)
        (flickr / KARPATHY_FILE).write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
        with open(vqa / "figure5.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIGURE5_COLUMNS)
            writer.writeheader()
            writer.writerows(figure5)
    return {"vqa": root / "vqa", "flickr30k": root / "flickr30k", "figure5": root / "vqa" / "figure5.csv"}


def write_vqa_files(vqa: Path, split: str, questions: list[dict], annotations: list[dict]) -> None:
    """The questions file of ``split`` and, but for a test split, its annotations file."""
    head = {"info": {"description": "absvit-bench embedded V&L scenes (generated)"}, "data_subtype": split,
            "data_type": "mscoco"}
    (vqa / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(
        json.dumps({**head, "task_type": "Open-Ended", "questions": questions}))
    if not is_test_split(split):
        (vqa / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({**head, "annotations": annotations}))


def vl_corpus(root, splits=SPLITS) -> list[str]:
    """Every question and caption of ``splits`` of a ``generate_vl`` tree (read back through the readers): the
    text the embedded tokenizer is trained on (all splits), and its masked-LM pretraining (train only)."""
    root = Path(root)
    texts = [r.question for split in splits for r in read_vqa(root / "vqa", VQA_SPLITS[split])]
    return texts + [caption for split in splits for record in read_karpathy(root / "flickr30k", split)
                    for caption in record.captions]


def pretrain_mlm(model, tokenizer, texts: list[str], *, steps: int, seed: int, batch_size: int = 64,
                 lr: float = 5e-4) -> float:
    """Masked-LM pretraining of the RoBERTa ``model`` (a ``RobertaForMaskedLM``) on ``texts`` for ``steps`` AdamW
    steps (transformers' collator: 15 % of the tokens masked), under ``seed``; returns the last loss. What the
    embedded text encoder does once, briefly, where a real pipeline starts from roberta-base."""
    import torch
    from transformers import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    encoded = [tokenizer(t, truncation=True)["input_ids"] for t in texts]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        picks = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        batch = collate([{"input_ids": encoded[i]} for i in picks])
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def build_text_encoder(folder, texts: list[str], *, hidden: int = 64, layers: int = 2, heads: int = 2,
                       vocab_size: int = 1000, max_len: int = MAX_TEXT_LEN + 2, seed: int = 0,
                       mlm_texts: list[str] = (), mlm_steps: int = 0) -> Path:
    """A small RoBERTa saved into ``folder`` (replaced whole, renamed into place when complete) as
    ``save_pretrained`` saves ``roberta-base``, so that ``AutoTokenizer.from_pretrained(folder,
    local_files_only=True)`` and ``RobertaModel.from_pretrained(folder, local_files_only=True)`` read it.

    The tokenizer is a byte-level BPE trained on ``texts`` with at most ``vocab_size`` tokens and RoBERTa's
    special tokens (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 4); it takes ``max_len - 2`` tokens at most
    (RoBERTa's positions start after the padding id). The model's weights are random under ``seed``, then, with
    ``mlm_steps``, pretrained by masked-LM on ``mlm_texts`` (``pretrain_mlm``: the train split's questions and
    captions). ``absvit.json`` in the folder says which. Returns ``folder``.
    """
    import torch  # here: transformers takes seconds to import, and generate_vl needs none of them
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizer

    if not texts:
        raise ValueError("build_text_encoder: no texts to train the tokenizer on (expected the generated questions "
                         "and captions)")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=1, special_tokens=list(SPECIAL_TOKENS),
                            show_progress=False)
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = RobertaTokenizer(vocab=trained["vocab"], merges=[tuple(m) for m in trained["merges"]],
                                 model_max_length=max_len - 2)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=max_len,
                           type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RobertaForMaskedLM(config)
        loss = pretrain_mlm(model, tokenizer, list(mlm_texts), steps=mlm_steps, seed=seed) if mlm_steps else None
    pretraining = (f"masked-LM, {mlm_steps} steps of 64 on the {len(mlm_texts)} generated train questions and captions "
                   f"(last loss {loss:.3f})" if mlm_steps else None)
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        tokenizer.save_pretrained(tmp)
        model.roberta.save_pretrained(tmp)
        write_json(tmp / "absvit.json", {
            "pretrained": bool(mlm_steps), "pretraining": pretraining, "seed": seed, "texts": len(texts),
            "note": ("the embedded default's stand-in for roberta-base (same files, same loading code): " +
                     (f"pretrained briefly ({pretraining}), not roberta-base" if mlm_steps else
                      "random init, NOT pretrained") +
                     "; its tokenizer is a byte-level BPE trained on the generated questions and captions")})
    return folder
