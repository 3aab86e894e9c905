"""A V&L job never reuses stale work and fails before training on bad input: each case one line naming the path or key,
or a fresh start that says which input changed (on the embedded data at toy size)."""
import json
import shutil

import pytest
from PIL import Image

from absvit.cli import main
from absvit.errors import CheckpointError, DatasetError, StaleCheckpoint, UsageError
from absvit.vl.recipe import VLRecipe
from absvit.vl.encoders import check_text_encoder
from absvit.vl.finetune import finetune
from absvit.vl.records import read_karpathy, read_vqa, retrieval_splits, vqa_splits
from tests.helpers import VL_RECIPE

RECIPE = VLRecipe.for_task("vqa", VL_RECIPE)


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_json(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def run(tmp_path, vl_data, encoder, out="run", data=None, text=None, **kw):
    return finetune("vqa", encoder, text or vl_data["text"], data or vl_data["vqa"], tmp_path / out,
                    kw.pop("recipe", RECIPE), track=False, **kw)


# -- a resumed job is the same run: its inputs by content -------------------------------------------------------

def test_an_encoder_rewritten_at_the_same_path_starts_fresh(tmp_path, vl_data, encoders, pico_run, capsys):
    encoder = tmp_path / "encoder.pth"
    shutil.copy(encoders["absvit"], encoder)
    run(tmp_path, vl_data, encoder, stop_after_epoch=1)  # killed after epoch 1
    shutil.copy(pico_run / "checkpoint.pth", encoder)  # other weights of the same model, at the same path
    with pytest.raises(StaleCheckpoint, match=r"belongs to a different run; it differs in inputs\.encoder: "
                                              r"checkpoint sha256:\w{12} vs now sha256:\w{12}"):
        run(tmp_path, vl_data, encoder)
    capsys.readouterr()
    fresh = run(tmp_path, vl_data, encoder, fresh_on_change=True)
    said = capsys.readouterr().out
    assert "resuming" not in said and "(inputs.encoder: checkpoint sha256:" in said and "starting fresh" in said
    assert [line.count("\n") for line in said.splitlines() if "moved it aside" in line] == [0]  # one line
    assert fresh == run(tmp_path, vl_data, encoder, out="reference")  # = a run that never saw the old weights
    assert len(list((tmp_path / "run").glob("stale-*/checkpoint.pth"))) == 1  # moved aside, not deleted


def test_changed_labels_or_vocabulary_in_the_same_folder_start_fresh(tmp_path, vl_data, encoders, capsys):
    data = copy(vl_data["vqa"], tmp_path / "vqa")
    run(tmp_path, vl_data, encoders["vit"], data=data, stop_after_epoch=1)
    annotations = data / "v2_mscoco_train2014_annotations.json"

    def relabel(d):  # another answer for one question: the labels change, the answer vocabulary too
        a = d["annotations"][0]
        a["multiple_choice_answer"] = "magenta"
        for answer in a["answers"]:
            answer["answer"] = "magenta"

    edit_json(annotations, relabel)
    capsys.readouterr()
    run(tmp_path, vl_data, encoders["vit"], data=data, fresh_on_change=True)  # no load_state_dict error
    said = capsys.readouterr().out
    assert "inputs.data: checkpoint tree:" in said and "inputs.vocab: checkpoint sha256:" in said
    assert "resuming" not in said


# -- the text encoder's folder ----------------------------------------------------------------------------------

def test_the_text_encoder_folder_is_checked(tmp_path, vl_data):
    text = vl_data["text"]
    no_tokenizer = copy(text, tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (no_tokenizer / name).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=f"{no_tokenizer}: no tokenizer files in it"):
        check_text_encoder(no_tokenizer)

    small = copy(text, tmp_path / "small-embedding")  # a tokenizer larger than the model's embedding
    edit_json(small / "config.json", lambda c: c.update(vocab_size=10))
    with pytest.raises(CheckpointError, match=r"its tokenizer has \d+ tokens but the model embeds 10"):
        check_text_encoder(small)

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import RobertaTokenizerFast

    empty = copy(text, tmp_path / "empty-tokenizer")  # only the 5 special tokens: every question is <s> <unk>... </s>
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (empty / name).unlink(missing_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    words = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    RobertaTokenizerFast(tokenizer_object=words, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                         unk_token="<unk>", mask_token="<mask>").save_pretrained(empty)
    with pytest.raises(CheckpointError, match="special tokens only"):
        check_text_encoder(empty)

    from transformers import BertConfig, BertModel

    bert = copy(text, tmp_path / "bert-weights")  # RoBERTa's config, BERT's weights
    config = json.loads((text / "config.json").read_text())
    BertModel(BertConfig(vocab_size=config["vocab_size"], hidden_size=config["hidden_size"], num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=8)).save_pretrained(tmp_path / "bert")
    shutil.copy(tmp_path / "bert" / "model.safetensors", bert / "model.safetensors")
    from absvit.vl.encoders import TextEncoder

    with pytest.raises(CheckpointError, match=f"text encoder: {bert}: the weights lack or misfit") as e:
        TextEncoder(bert)
    assert "\n" not in str(e.value)


def test_a_missing_text_encoder_is_one_line(tmp_path, vl_data, encoders, capsys):
    argv = ["vl-vqa", "--encoder", str(encoders["vit"]), "--text-encoder", str(tmp_path / "missing"), "--data",
            str(vl_data["vqa"]), "--out", str(tmp_path / "out"), "--recipe", json.dumps(VL_RECIPE), "--no-mlflow"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"text encoder: {tmp_path / 'missing'}: no such folder" in err
    assert not (tmp_path / "out" / "checkpoint.pth").exists()


# -- the data: its schema, its splits, its images -----------------------------------------------------------------

@pytest.mark.parametrize("what, change, message", [
    ("an answer that is a number", lambda d: d["annotations"][0]["answers"][0].update(answer=2),
     r"annotations\[0\]\.answers\[0\]\.answer is 2 \(expected a string"),
    ("a question annotated twice", lambda d: d["annotations"].append(dict(d["annotations"][0])),
     r"annotations\[\d+\] repeats question_id \d+ of annotations\[0\]"),
    ("an annotation of no question", lambda d: d["annotations"].append({**d["annotations"][0], "question_id": 7}),
     r"annotations\[\d+\] has question_id 7, which v2_OpenEnded_mscoco_train2014_questions\.json does not ask"),
])
def test_the_vqa_annotations_are_checked(tmp_path, vl_data, what, change, message):
    data = copy(vl_data["vqa"], tmp_path / "vqa")
    edit_json(data / "v2_mscoco_train2014_annotations.json", change)
    with pytest.raises(DatasetError, match=f"^{data / 'v2_mscoco_train2014_annotations.json'}: {message}"):
        read_vqa(data, "train2014")


def test_split_sizes_are_checked_before_training(tmp_path, vl_data):
    data = copy(vl_data["vqa"], tmp_path / "vqa")
    edit_json(data / "v2_OpenEnded_mscoco_val2014_questions.json", lambda d: d.update(questions=[]))
    edit_json(data / "v2_mscoco_val2014_annotations.json", lambda d: d.update(annotations=[]))
    with pytest.raises(DatasetError, match=f"{data / 'v2_OpenEnded_mscoco_val2014_questions.json'}: no question to "
                                           "evaluate"):
        vqa_splits(data, RECIPE)
    with pytest.raises(DatasetError, match=r"v2_mscoco_train2014_annotations\.json: \d+ questions with an answer of "
                                           r"the vocabulary to train on \(expected at least batch_size 512"):
        vqa_splits(vl_data["vqa"], VLRecipe.for_task("vqa", {**VL_RECIPE, "batch_size": 512}))
    flickr = copy(vl_data["flickr30k"], tmp_path / "flickr")
    edit_json(flickr / "dataset_flickr30k.json", lambda d: d.update(images=[i for i in d["images"] if i["split"] != "test"]))
    with pytest.raises(DatasetError, match="dataset_flickr30k.json: no image of the test split"):
        retrieval_splits(flickr, VLRecipe.for_task("retrieval", VL_RECIPE))
    edit_json(flickr / "dataset_flickr30k.json", lambda d: d.update(images=[]))
    with pytest.raises(DatasetError, match=r"dataset_flickr30k.json: 0 captions to train on"):
        retrieval_splits(flickr, VLRecipe.for_task("retrieval", VL_RECIPE))
    assert read_karpathy(vl_data["flickr30k"], "test")  # (the original is untouched)


def break_image(path, how):
    if how == "not a JPEG":
        path.write_bytes(b"<html>not an image</html>")
    else:  # truncated
        path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize("split, how", [("val2014", "not a JPEG"), ("train2014", "truncated")])
def test_an_unreadable_image_fails_at_start_or_is_left_out(tmp_path, vl_data, encoders, split, how):
    data = copy(vl_data["vqa"], tmp_path / "vqa")
    bad = sorted((data / split).glob("*.jpg"))[0]
    break_image(bad, how)
    with pytest.raises(DatasetError, match=f"^{bad}: unreadable image .*1 of the \\d+ images this job reads do not "
                                           "decode.*set skip_bad_images: true") as e:
        run(tmp_path, vl_data, encoders["vit"], data=data)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # before any training
    whole = run(tmp_path, vl_data, encoders["vit"], out="whole")
    skipped = run(tmp_path, vl_data, encoders["vit"], data=data, out="skipped",
                  recipe=VLRecipe.for_task("vqa", {**VL_RECIPE, "skip_bad_images": True}))
    assert skipped["skipped_images"] == 1 and skipped["skipped"] == [str(bad)]
    if split == "val2014":  # the image's questions are left out of the evaluation
        assert skipped["questions"] == whole["questions"] - sum(r.image == bad for r in read_vqa(data, split))
    assert json.loads((tmp_path / "skipped" / "result.json").read_text())["skipped_images"] == 1


def test_the_recipes_image_size_must_be_the_encoders(tmp_path, vl_data, encoders):
    recipe = VLRecipe.for_task("vqa", {**VL_RECIPE, "img_size": 56})
    with pytest.raises(UsageError, match=r"^recipe.img_size: 56 does not fit the encoder .* which takes 64x64 images; "
                                         "expected 64"):
        run(tmp_path, vl_data, encoders["vit"], recipe=recipe)
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


# -- Figure 5's inputs ------------------------------------------------------------------------------------------

def test_figure5_refuses_swapped_models_and_colour_masks(tmp_path, vl_data, encoders):
    for kind in ("absvit", "vit"):
        run(tmp_path, vl_data, encoders[kind], out=kind, recipe=VLRecipe.for_task("vqa", {**VL_RECIPE, "epochs": 1}))
    figure = ["vl-figure", "--manifest", str(vl_data["figure5"]), "--out-dir", str(tmp_path / "fig"), "--no-mlflow"]
    with pytest.raises(UsageError, match="--absvit-model .*/vit/model.pth: its visual encoder is vit_pico_patch8_64 "
                                         "without a top-down path.*swapped"):
        from absvit.vl.figure import make_figure5

        make_figure5(tmp_path / "vit" / "model.pth", tmp_path / "absvit" / "model.pth", vl_data["figure5"],
                     tmp_path / "fig", track=False)
    manifest = copy(vl_data["figure5"].parent, tmp_path / "vqa") / "figure5.csv"
    first_mask = manifest.parent / manifest.read_text().splitlines()[1].split(",")[3]
    Image.open(first_mask).convert("RGB").save(first_mask)
    figure[2] = str(manifest)
    assert main([*figure, "--absvit-model", str(tmp_path / "absvit" / "model.pth"), "--vit-model",
                 str(tmp_path / "vit" / "model.pth")]) == 2
    assert not (tmp_path / "fig" / "fig5.csv").exists()


def test_model_files_record_paths_relative_to_the_project(tmp_path, vl_data, encoders, monkeypatch):
    """A results folder moved with its project reads the moved project's text encoder."""
    project = tmp_path / "project"
    shutil.copytree(vl_data["text"], project / "text")
    shutil.copy(encoders["vit"], project / "encoder.pth")
    monkeypatch.chdir(project)
    finetune("vqa", "encoder.pth", project / "text", vl_data["vqa"], "out", VLRecipe.for_task("vqa", {**VL_RECIPE, "epochs": 1}),
             track=False)
    from absvit.checkpoint import read_checkpoint
    from absvit.vl.finetune import load_finetuned

    vl = read_checkpoint(project / "out" / "model.pth")["vl"]
    assert (vl["text_encoder"], vl["encoder"]) == ("text", "encoder.pth")
    moved = tmp_path / "moved"
    project.rename(moved)
    monkeypatch.chdir(moved)
    assert load_finetuned("out/model.pth")[1]["text_encoder"] == "text"  # read from the moved copy
