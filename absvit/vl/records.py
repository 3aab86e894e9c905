"""VQAv2 and Flickr30k (Karpathy split) in their published layouts, read as plain records, and each task's splits
checked: what a job reads and what the pipeline checks before it builds the DAG (this module imports no torch).

Every problem a reader finds raises ``DatasetError`` with one line naming the file and the key and what was
expected: a field of the wrong type, a question asked or annotated twice, an annotation of no question, a missing
image, a split too small to train on or empty to evaluate (``vqa_splits``, ``retrieval_splits``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from absvit.errors import DatasetError
from absvit.vl.answers import answer_vocabulary, normalize_answer, soft_targets

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


def texts(items, key: str, where: str, name: str) -> tuple[str, ...]:
    """The strings under ``key`` of the non-empty list ``items`` (``<where>.<name>``: an entry's list of objects,
    such as an annotation's answers); DatasetError naming the first that is missing or no string."""
    if not isinstance(items, list) or not items:
        raise DatasetError(f"{where}.{name} is {items!r} (expected a non-empty list of objects with '{key}')")
    for k, item in enumerate(items):
        value = item.get(key) if isinstance(item, dict) else None
        if not isinstance(value, str):
            raise DatasetError(f"{where}.{name}[{k}].{key} is {value!r} (expected a string, as written by a person)")
    return tuple(item[key] for item in items)


def check_image(path: Path, where: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path}: no such image (named by {where})")
    return path


def read_vqa(root, split: str) -> list[VQARecord]:
    """The questions of VQA split ``split`` (train2014, val2014, test-dev2015, ...) under ``root`` (``VQA_LAYOUT``),
    in the questions file's order. Checked: every field's type, one annotation per question and no other, no
    question id twice; images are checked to exist, not decoded."""
    root = Path(root)
    qfile = root / f"v2_OpenEnded_mscoco_{split}_questions.json"
    questions = load_json(qfile, "questions")
    asked: dict = {}
    for n, entry in enumerate(questions):
        qid, image_id, question = fields(entry, ("question_id", "image_id", "question"), qfile, "questions", n)
        for key, value, kind in (("question_id", qid, int), ("image_id", image_id, int), ("question", question, str)):
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DatasetError(f"{qfile}: questions[{n}].{key} is {value!r} "
                                   f"(expected {'an integer' if kind is int else 'a string'})")
        if qid in asked:
            raise DatasetError(f"{qfile}: questions[{n}] repeats question_id {qid} of questions[{asked[qid]}] "
                               "(expected each question once)")
        asked[qid] = n
    annotations: dict[int, tuple] = {}
    if not is_test_split(split):
        afile = root / f"v2_mscoco_{split}_annotations.json"
        seen: dict = {}
        for n, entry in enumerate(load_json(afile, "annotations")):
            qid, answers, mc = fields(entry, ("question_id", "answers", "multiple_choice_answer"), afile,
                                      "annotations", n)
            answers = texts(answers, "answer", f"{afile}: annotations[{n}]", "answers")
            if not isinstance(mc, str):
                raise DatasetError(f"{afile}: annotations[{n}].multiple_choice_answer is {mc!r} (expected a string)")
            if qid in seen:
                raise DatasetError(f"{afile}: annotations[{n}] repeats question_id {qid} of annotations[{seen[qid]}] "
                                   "(expected one annotation per question)")
            if qid not in asked:
                raise DatasetError(f"{afile}: annotations[{n}] has question_id {qid}, which {qfile.name} does not ask "
                                   "(expected the annotations of that file's questions)")
            seen[qid] = n
            annotations[qid] = (answers, mc)
    folder = root / vqa_image_folder(split)
    images: set[int] = set()
    records = []
    for n, entry in enumerate(questions):
        qid, image_id, question = entry["question_id"], entry["image_id"], entry["question"]
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
        captions = texts(sentences, "raw", f"{path}: images[{n}]", "sentences")
        if not isinstance(filename, str) or not isinstance(imgid, int) or isinstance(imgid, bool):
            raise DatasetError(f"{path}: images[{n}] has filename {filename!r} and imgid {imgid!r} (expected a file "
                               "name and an integer)")
        image = check_image(root / KARPATHY_IMAGES / filename, f"images[{n}] of {path}")
        records.append(CaptionRecord(image, imgid, captions))
    return records


def enough_to_train(n: int, recipe, what: str, where) -> None:
    """A training split must give at least one update of ``recipe.batch_size`` samples, or the job would end with
    nothing trained (and the schedule with no steps)."""
    if n < recipe.batch_size:
        raise DatasetError(f"{where}: {n} {what} to train on (expected at least batch_size {recipe.batch_size}, one "
                           "update; an empty or near-empty split?)")


def vqa_splits(root, recipe, leave_out=frozenset()):
    """(training questions with an answer in the vocabulary, evaluation split, its questions, the vocabulary) of the
    VQAv2 folder ``root`` (``read_vqa``); questions whose image is in ``leave_out`` are left out. Raises
    DatasetError naming the file when a split is too small to train on or empty to evaluate."""
    root = Path(root)
    train, val = read_vqa(root, "train2014"), read_vqa(root, "val2014")
    vocab = answer_vocabulary([normalize_answer(r.multiple_choice_answer) for r in train + val], recipe.min_answer_count)
    index = {a: i for i, a in enumerate(vocab)}
    kept = [r for r in train + (val if recipe.trainval else []) if str(r.image) not in leave_out]
    fitted = [r for r in kept if soft_targets(r.answers, index)[0]]
    files = " + ".join(f"v2_mscoco_{s}_annotations.json" for s in (("train2014", "val2014") if recipe.trainval
                                                                     else ("train2014",)))
    enough_to_train(len(fitted), recipe, "questions with an answer of the vocabulary", root / files)
    eval_split = "test-dev2015" if recipe.trainval else "val2014"
    evaluated = [r for r in (read_vqa(root, eval_split) if recipe.trainval else val) if str(r.image) not in leave_out]
    if not evaluated:
        raise DatasetError(f"{root / f'v2_OpenEnded_mscoco_{eval_split}_questions.json'}: no question to evaluate "
                           f"(expected the {eval_split} questions)")
    return fitted, eval_split, evaluated, vocab


def retrieval_splits(root, recipe, leave_out=frozenset()):
    """(training images, test images) of the Flickr30k folder ``root`` (``read_karpathy``; train + val with
    ``trainval``); images in ``leave_out`` are left out. Raises DatasetError naming the file when a split is too
    small to train on or empty to evaluate."""
    path = Path(root) / KARPATHY_FILE
    train = read_karpathy(root, "train") + (read_karpathy(root, "val") if recipe.trainval else [])
    train = [r for r in train if str(r.image) not in leave_out]
    enough_to_train(sum(len(r.captions) for r in train), recipe, "captions", path)
    test = [r for r in read_karpathy(root, "test") if str(r.image) not in leave_out]
    if not test:
        raise DatasetError(f"{path}: no image of the test split (expected the Karpathy test images to score)")
    return train, test
