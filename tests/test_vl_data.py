"""The V&L stage's data: VQA answers and accuracy, the VQAv2 / Flickr30k readers and datasets, the embedded
generator and its small text encoder."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from absvit.data.shapes import SHAPE_WORDS, SHAPES
from absvit.errors import DatasetError
from absvit.vl.answers import answer_vocabulary, normalize_answer, soft_score, soft_targets, vqa_accuracy
from absvit.vl.datasets import CaptionDataset, ImageDataset, TextDataset, VQADataset
from absvit.vl.records import read_karpathy, read_vqa
from absvit.vl.transforms import CLIP_MEAN, CLIP_STD, meter_rand_augment, vl_transform
from absvit.vl.embedded import PALETTE, build_text_encoder, generate_vl, vl_corpus
from tests.helpers import tree_digest

COUNTS = {"train": 4, "val": 3, "test": 2}


@pytest.fixture(scope="module")
def vl_data(tmp_path_factory):
    return generate_vl(tmp_path_factory.mktemp("vl") / "data", seed=0, counts=COUNTS)


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory, vl_data):
    folder = tmp_path_factory.mktemp("vl-text") / "roberta"
    return build_text_encoder(folder, vl_corpus(vl_data["vqa"].parent), hidden=16, layers=1, heads=2)


@pytest.fixture(scope="module")
def tokenizer(text_encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(text_encoder, local_files_only=True)


# --- answers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("the dog", "dog"), ("Yes.", "yes"), ("dont", "don't"), ("An Apple", "apple"),
    ("1,000", "1000"), ("1.5", "1.5"), ("black-white", "black white"), ("  a   Red  ball ", "red ball"),
    ("no, it isnt", "no it isn't"), ("ten", "10"), ("eleven", "eleven"), ("what?", "what"), ("its", "its"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("prediction, answers, expected", [
    ("Two", ["2"] + ["1"] * 9, 0.3),  # one of ten annotators: 9 subsets of 9 hold it once, 1 not at all
    ("the dog", ["dog"] * 2 + ["cat"] * 8, 0.6),
    ("yes.", ["yes"] * 3 + ["no"] * 7, 0.9),
    ("dont", ["don't"] * 4 + ["do"] * 6, 1.0),
    ("red", ["red"] * 10, 1.0),
    ("blue", ["red"] * 10, 0.0),
])
def test_vqa_accuracy_by_hand(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_vqa_accuracy_is_the_leave_one_out_mean():
    for matches in range(11):
        answers = ["a"] * matches + ["b"] * (10 - matches)
        subsets = [answers[:k] + answers[k + 1:] for k in range(10)]
        expected = np.mean([min(s.count("a") / 3, 1) for s in subsets])
        assert vqa_accuracy("a", answers) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no human answers"):
        vqa_accuracy("a", [])


def test_soft_scores():
    assert [soft_score(n) for n in (0, 1, 2, 3, 4, 7, 10)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="-1 annotators"):
        soft_score(-1)
    index = {"yes": 0, "no": 1, "2": 2}
    # the raw strings are counted (METER's write_vqa.py): "Yes" and "two" are no entry of the normalised vocabulary
    assert soft_targets(["yes"] * 3 + ["Yes", "no"] + ["maybe"] * 3 + ["two", "2"], index) == ([0, 1, 2], [0.9, 0.3, 0.3])
    assert soft_targets(["maybe"] * 10, index) == ([], [])


def test_soft_targets_count_the_raw_answers_as_the_official_code():
    vocab = answer_vocabulary(["1"] * 9 + ["2"] * 9 + ["3"] * 9)
    answers = ["2", "two", "two", "Two"] + ["1"] * 4 + ["3"] * 2
    labels, scores = soft_targets(answers, {a: i for i, a in enumerate(vocab)})
    assert {vocab[k]: s for k, s in zip(labels, scores)} == {"2": 0.3, "1": 1.0, "3": 0.6}


def test_none_is_zero():
    assert normalize_answer("none") == normalize_answer("None.") == normalize_answer("zero") == "0"
    assert answer_vocabulary(["none"] * 5 + ["0"] * 4) == ["0"]
    assert vqa_accuracy("none", ["0"] * 10) == 1.0


def test_vocabulary_threshold_and_order():
    answers = ["dog"] * 9 + ["cat"] * 8 + ["Two"] * 5 + ["2"] * 5 + ["bird"] * 9
    assert answer_vocabulary(answers) == ["2", "bird", "dog"]  # cat (8) out; "Two" and "2" are one answer
    assert answer_vocabulary(answers, min_count=8) == ["2", "bird", "dog", "cat"]


# --- readers -------------------------------------------------------------------------------------------------


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 30, 200)).save(path)


def _vqa_tree(root):
    """Two train2014 questions on one image, one test-dev2015 question, in the published layout."""
    questions = [{"image_id": 9, "question": "what colour is it?", "question_id": 90},
                 {"image_id": 9, "question": "is it round?", "question_id": 91}]
    answers = [["purple"] * 9 + ["violet"], ["yes"] * 10]
    annotations = [{"question_id": q["question_id"], "image_id": 9, "multiple_choice_answer": a[0],
                    "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": k + 1} for k, x in enumerate(a)]}
                   for q, a in zip(questions, answers)]
    (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps({"questions": questions}))
    (root / "v2_mscoco_train2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    (root / "v2_OpenEnded_mscoco_test-dev2015_questions.json").write_text(
        json.dumps({"questions": [{"image_id": 5, "question": "what is it?", "question_id": 50}]}))
    _image(root / "train2014" / "COCO_train2014_000000000009.jpg")
    _image(root / "test2015" / "COCO_test2015_000000000005.jpg")


def test_read_vqa(tmp_path):
    _vqa_tree(tmp_path)
    first, second = read_vqa(tmp_path, "train2014")
    assert first.image == tmp_path / "train2014" / "COCO_train2014_000000000009.jpg"
    assert (first.image_id, first.question_id, first.question) == (9, 90, "what colour is it?")
    assert first.answers == ("purple",) * 9 + ("violet",) and first.multiple_choice_answer == "purple"
    assert second.answers == ("yes",) * 10
    (test,) = read_vqa(tmp_path, "test-dev2015")
    assert test.image == tmp_path / "test2015" / "COCO_test2015_000000000005.jpg"
    assert (test.answers, test.multiple_choice_answer) == ((), "")


def _break(root, what):
    annotations = root / "v2_mscoco_train2014_annotations.json"
    if what == "missing":
        annotations.unlink()
    elif what == "malformed":
        annotations.write_text('{"annotations": [')
    elif what == "unannotated":
        data = json.loads(annotations.read_text())
        annotations.write_text(json.dumps({"annotations": data["annotations"][:1]}))
    elif what == "image":
        (root / "train2014" / "COCO_train2014_000000000009.jpg").unlink()
    elif what == "key":
        (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(
            json.dumps({"questions": [{"image_id": 9, "question_id": 90}]}))


@pytest.mark.parametrize("what, path, expected", [
    ("missing", "v2_mscoco_train2014_annotations.json", "no such file"),
    ("malformed", "v2_mscoco_train2014_annotations.json", "not valid JSON"),
    ("unannotated", "v2_mscoco_train2014_annotations.json", "no annotation for question_id 91"),
    ("image", "train2014/COCO_train2014_000000000009.jpg", "no such image"),
    ("key", "v2_OpenEnded_mscoco_train2014_questions.json", r"questions\[0\] lacks question "),
])
def test_read_vqa_names_the_bad_file(tmp_path, what, path, expected):
    _vqa_tree(tmp_path)
    _break(tmp_path, what)
    with pytest.raises(DatasetError, match=expected) as error:
        read_vqa(tmp_path, "train2014")
    message = str(error.value)
    assert message.startswith(str(tmp_path / path)) and "\n" not in message


def _karpathy_tree(root, images=None):
    entries = images or [
        {"filename": f"{k}.jpg", "imgid": k, "split": split,
         "sentences": [{"raw": f"caption {c} of {k}", "tokens": ["caption"]} for c in range(5)]}
        for k, split in enumerate(["train", "restval", "val", "test"])]
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    for entry in entries:
        _image(root / "flickr30k-images" / entry["filename"])


def test_read_karpathy(tmp_path):
    _karpathy_tree(tmp_path)
    train = read_karpathy(tmp_path, "train")
    assert [r.image_id for r in train] == [0, 1]  # restval counts as train
    assert train[1].image == tmp_path / "flickr30k-images" / "1.jpg"
    assert train[1].captions == tuple(f"caption {c} of 1" for c in range(5))
    assert [r.image_id for r in read_karpathy(tmp_path, "val")] == [2]
    assert [r.image_id for r in read_karpathy(tmp_path, "test")] == [3]
    with pytest.raises(DatasetError, match="unknown"):
        read_karpathy(tmp_path, "restval")


@pytest.mark.parametrize("what, path, expected", [
    ("image", "flickr30k-images/0.jpg", "no such image"),
    ("split", "dataset_flickr30k.json", "has split 'dev'"),
    ("malformed", "dataset_flickr30k.json", "not valid JSON"),
    ("sentences", "dataset_flickr30k.json", r"images\[0\]\.sentences\[0\]\.raw is None \(expected a string"),
])
def test_read_karpathy_names_the_bad_file(tmp_path, what, path, expected):
    _karpathy_tree(tmp_path)
    data = json.loads((tmp_path / "dataset_flickr30k.json").read_text())
    if what == "image":
        (tmp_path / "flickr30k-images" / "0.jpg").unlink()
    elif what == "split":
        data["images"][1]["split"] = "dev"
    elif what == "sentences":
        data["images"][0]["sentences"] = [{"tokens": []}]
    (tmp_path / "dataset_flickr30k.json").write_text('{"images": [' if what == "malformed" else json.dumps(data))
    with pytest.raises(DatasetError, match=expected) as error:
        read_karpathy(tmp_path, "train")
    message = str(error.value)
    assert message.startswith(str(tmp_path / path)) and "\n" not in message


# --- datasets ------------------------------------------------------------------------------------------------


def test_vl_transform_resizes_the_short_side_and_crops_the_centre():
    """METER's clip_transform on a non-square image: short side to the size (bicubic), centre crop, CLIP mean / std."""
    pixels = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)  # 50 wide, 30 high
    image = Image.fromarray(pixels)
    out = vl_transform(24, train=False)(image)
    # by hand: 30 -> 24, so 50 -> int(24 * 50 / 30) = 40 wide; then columns 8..32 (round((40 - 24) / 2) = 8)
    crop = np.asarray(image.resize((40, 24), Image.BICUBIC), dtype=np.float32)[:, 8:32] / 255
    expected = (torch.from_numpy(crop).permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    assert out.shape == (3, 24, 24)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert vl_transform(24, train=True)(image).shape == (3, 24, 24)
    train = vl_transform(24, train=True).transforms
    assert type(train[0]).__name__ == "RandAugment"  # on the PIL image at its own size, before the resize
    assert not any(type(t).__name__ == "RandAugment" for t in vl_transform(24, train=False).transforms)


def test_meter_rand_augment_settings():
    """METER's RandAugment(2, 9): 14 ops, each applied, magnitude 9 of 30, nearest resampling, black fill."""
    ra = meter_rand_augment()
    ops = {op.name: op for op in ra.ops}
    assert ra.num_layers == 2 and len(ops) == 14 and "Invert" not in ops
    assert all(op.prob == 1.0 for op in ops.values())
    args = {name: abs(op.level_fn(op.magnitude, op.hparams)[0]) for name, op in ops.items() if op.level_fn}
    assert args == pytest.approx({"Rotate": 9.0, "Posterize": 1, "Solarize": 76.8, "SolarizeAdd": 33, "Color": 0.64,
                                  "Contrast": 0.64, "Brightness": 0.64, "Sharpness": 0.64, "ShearX": 0.09,
                                  "ShearY": 0.09, "TranslateX": 30.0, "TranslateY": 30.0})
    row = Image.fromarray(np.array([[0, 50, 76, 77, 94, 95, 100, 200, 240]], dtype=np.uint8)).convert("RGB")

    def apply(name):
        return np.asarray(ops[name](row))[0, :, 0].tolist()

    # SolarizeAdd: +33 on every pixel (clipped), then pixels >= 128 inverted; Solarize: pixels >= 76.8 inverted
    assert apply("SolarizeAdd") == [33, 83, 109, 110, 127, 127, 122, 22, 0]
    assert apply("Solarize") == [0, 50, 76, 178, 161, 160, 155, 55, 15]
    assert apply("Posterize") == [0, 0, 0, 0, 0, 0, 0, 128, 128]
    image = Image.new("RGB", (100, 10), (200, 200, 200))
    shifted = np.asarray(ops["TranslateX"](image))[:, :, 0]
    assert set(np.unique(shifted)) == {0, 200}  # filled with black, not timm's grey; nearest: no blended edge
    assert (shifted == 0).sum(axis=1).tolist() == [30] * 10  # 30 px


def test_vqa_dataset(vl_data, tokenizer):
    records = read_vqa(vl_data["vqa"], "train2014")
    vocab = ["yes", "no"] + list(PALETTE)
    dataset = VQADataset(records, vocab, tokenizer, vl_transform(32, train=True))
    batch = torch.utils.data.default_collate([dataset[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 32, 32)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 50)
    assert batch["targets"].shape == (3, len(vocab)) and batch["targets"].dtype == torch.float32
    assert batch["index"].tolist() == [0, 1, 2]
    for i in range(len(records)):
        labels, scores = soft_targets(records[i].answers, dataset.index)
        expected = torch.zeros(len(vocab))
        expected[labels] = torch.tensor(scores)
        assert torch.equal(dataset[i]["targets"], expected)
    colour_question = next(i for i, r in enumerate(records) if r.question.startswith("what colour"))
    assert dataset[colour_question]["targets"].max() >= 0.9


def test_caption_negatives_are_other_images_and_reproducible(vl_data, tokenizer):
    records = read_karpathy(vl_data["flickr30k"], "train")
    dataset = CaptionDataset(records, tokenizer, vl_transform(32, train=False), negatives=15, seed=3)
    assert len(dataset) == 5 * len(records)
    for index in range(len(dataset)):
        image, _ = dataset.samples[index]
        assert all(j != image for j, _ in dataset.negative_pairs(index))
    few = CaptionDataset(records, tokenizer, vl_transform(32, train=False), negatives=3, seed=3)
    assert all(len({j for j, _ in few.negative_pairs(i)}) == 3 for i in range(len(few)))  # no repeated image
    again = CaptionDataset(records, tokenizer, vl_transform(32, train=False), negatives=15, seed=3)
    draws = [dataset.negative_pairs(i) for i in range(len(dataset))]
    assert draws == [again.negative_pairs(i) for i in range(len(again))]
    again.set_epoch(1)
    assert draws != [again.negative_pairs(i) for i in range(len(again))]
    item = dataset[7]
    assert item["image"].shape == (3, 32, 32) and item["input_ids"].shape == (50,)
    assert item["negative_input_ids"].shape == item["negative_attention_mask"].shape == (15, 50)
    texts = [records[j].captions[k] for j, k in dataset.negative_pairs(7)]
    assert torch.equal(item["negative_input_ids"][4], tokenizer(texts[4], padding="max_length", max_length=50,
                                                                 return_tensors="pt")["input_ids"][0])


def test_retrieval_evaluation_datasets(vl_data, tokenizer):
    records = read_karpathy(vl_data["flickr30k"], "test")
    images = ImageDataset(records, vl_transform(32, train=False))
    texts = TextDataset(records, tokenizer)
    assert len(images) == len(records) and images[1]["image"].shape == (3, 32, 32)
    assert len(texts) == 5 * len(records)
    assert [texts[i]["image_index"].item() for i in range(len(texts))] == [i // 5 for i in range(len(texts))]
    assert texts[6]["input_ids"].shape == (50,)


# --- the embedded default -------------------------------------------------------------------------------------


def test_embedded_layouts_read_back(vl_data):
    vqa, flickr = vl_data["vqa"], vl_data["flickr30k"]
    for split, scenes in (("train2014", COUNTS["train"]), ("val2014", COUNTS["val"])):
        records = read_vqa(vqa, split)
        assert len({r.image_id for r in records}) == scenes
        assert all(len(r.answers) == 10 and r.multiple_choice_answer for r in records)
    test = read_vqa(vqa, "test-dev2015")
    assert len({r.image_id for r in test}) == COUNTS["test"] and all(r.answers == () for r in test)
    ids = [r.question_id for s in ("train2014", "val2014", "test-dev2015") for r in read_vqa(vqa, s)]
    assert len(ids) == len(set(ids))
    for split, scenes in COUNTS.items():
        records = read_karpathy(flickr, split)
        assert len(records) == scenes and all(len(r.captions) == 5 for r in records)
    answers = [a for r in read_vqa(vqa, "train2014") for a in r.answers]
    assert len(set(answers)) > 1 and answers.count(max(set(answers), key=answers.count)) < len(answers)


def test_embedded_answers_match_the_scene(vl_data):
    """The colour asked about is the named object's (the mean colour of its mask's pixels is nearest to it, among
    the palette's colours as the stripe texture shades them), its shape is the mask's class."""
    vqa = vl_data["vqa"]
    records = {r.question_id: r for r in read_vqa(vqa, "val2014")}
    rows = list(csv.DictReader(vl_data["figure5"].read_text().splitlines()))
    assert rows and {r.question_id for r in records.values()} >= {int(row["question_id"]) for row in rows}
    shaded = {name: (np.array(c) + np.clip(np.array(c) + (120 if np.mean(c) < 128 else -120), 0, 255)) / 2
              for name, c in PALETTE.items()}
    for row in rows:
        record = records[int(row["question_id"])]
        assert record.question == row["question"] and record.image == vqa / row["image"]
        pixels = np.asarray(Image.open(vqa / row["image"]).convert("RGB"), float)
        mask = np.asarray(Image.open(vqa / row["mask"])) > 127
        assert mask.sum() > 20
        if record.question.startswith("what colour is the "):
            mean = pixels[mask].mean(axis=0)
            assert min(shaded, key=lambda name: np.linalg.norm(mean - shaded[name])) == record.multiple_choice_answer
            assert record.question == f"what colour is the {SHAPE_WORDS[SHAPES[int(row['class_index'])]]}?"
        else:
            assert record.multiple_choice_answer == SHAPE_WORDS[SHAPES[int(row["class_index"])]]
    for record in records.values():
        shapes = {SHAPE_WORDS[SHAPES[int(row["class_index"])]] for row in rows if vqa / row["image"] == record.image}
        if record.question.startswith("is there "):
            named = record.question.split(" ", 3)[3][:-1]  # "is there a(n) <shape>?"
            assert record.multiple_choice_answer == ("yes" if named in shapes else "no")
        if record.question.startswith("how many"):
            assert record.multiple_choice_answer == str(len(shapes))


def test_embedded_text_writes_shapes_as_words():
    from absvit.vl.embedded import listing

    assert SHAPE_WORDS["lshape"] == "L shape"
    assert listing(["red ring", "L shape", "arrow"]) == "a red ring, an L shape and an arrow"


def test_embedded_is_byte_identical_on_rerun(tmp_path, vl_data):
    again = generate_vl(tmp_path / "again", seed=0, counts=COUNTS)
    assert tree_digest(again["vqa"].parent) == tree_digest(vl_data["vqa"].parent)
    other = generate_vl(tmp_path / "other", seed=1, counts=COUNTS)
    assert tree_digest(other["vqa"].parent) != tree_digest(vl_data["vqa"].parent)
    with pytest.raises(ValueError, match="at least 2 scenes"):
        generate_vl(tmp_path / "bad", counts={"val": 1})


def test_text_encoder_loads_as_roberta_base_does(tmp_path, vl_data, text_encoder, tokenizer):
    from transformers import RobertaModel

    model = RobertaModel.from_pretrained(text_encoder, local_files_only=True)
    enc = tokenizer("what colour is the ring?", padding="max_length", truncation=True, max_length=50,
                    return_tensors="pt")
    ids, mask = enc["input_ids"][0].tolist(), enc["attention_mask"][0].tolist()
    n = sum(mask)
    assert ids[0] == 0 and ids[n - 1] == 2 and ids[n:] == [1] * (50 - n) and mask == [1] * n + [0] * (50 - n)
    assert 3 not in ids  # no <unk>: byte-level BPE covers any text
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    with torch.no_grad():
        assert model(**enc).last_hidden_state.shape == (1, 50, 16)
    info = json.loads((text_encoder / "absvit.json").read_text())
    assert info["pretrained"] is False and "NOT pretrained" in info["note"]
    again = build_text_encoder(tmp_path / "again", vl_corpus(vl_data["vqa"].parent), hidden=16, layers=1, heads=2)
    assert tree_digest(again) == tree_digest(text_encoder)
