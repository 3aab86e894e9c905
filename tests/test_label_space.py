"""The label space a run is evaluated in: the checkpoint's own, checked against every set at planning time, and
a label space smaller than ImageNet's evaluated on the folders of its classes (said in the result and caption)."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import timm
from PIL import Image

from absvit.checkpoint import save_checkpoint
from absvit.cli import main
from absvit.data.readers import DatasetError, label_space, select_classes, suite_problems
from absvit.tables import table3
from tests.helpers import dry_run, paper_config, workflow_copy

IMAGENET = label_space("imagenet-1k")
SPACE = IMAGENET[:2]  # a model of two ImageNet classes


def _images(folder, n=2, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_other_imagenet_classes_are_skipped_and_counted_any_other_folder_is_an_error(tmp_path):
    names = [*SPACE, IMAGENET[500]]
    assert select_classes(names, SPACE, subset=False, where=tmp_path) == (sorted(SPACE), [IMAGENET[500]])
    assert select_classes([SPACE[1], IMAGENET[7]], SPACE, subset=True, where=tmp_path) == ([SPACE[1]], [IMAGENET[7]])
    with pytest.raises(DatasetError, match="class 'n99999999' is not in the label space of 2 classes"):
        select_classes([*SPACE, "n99999999"], SPACE, subset=False, where=tmp_path)
    with pytest.raises(DatasetError, match="1 of the 2 classes are missing"):
        select_classes([SPACE[0], IMAGENET[7]], SPACE, subset=False, where=tmp_path)
    with pytest.raises(DatasetError, match="none of its 1 class folders is a class of the label space"):
        select_classes([IMAGENET[7]], SPACE, subset=True, where=tmp_path)
    # the full ImageNet label space skips nothing: a stray folder stays an error
    with pytest.raises(DatasetError, match="is not in the label space of 1000 classes"):
        select_classes([*IMAGENET, "n99999999"], IMAGENET, subset=False, where=tmp_path)


def test_a_subset_label_space_is_evaluated_on_its_classes_folders(tmp_path):
    """A model of 2 ImageNet classes on a Sketch-style set of 3 and an A-style set holding one of its classes:
    the same numbers as on folders pruned to its classes, and the result says what was skipped."""
    model = timm.create_model("vit_pico_patch8_64", num_classes=2).eval()
    ckpt = tmp_path / "model.pth"
    save_checkpoint(ckpt, model, arch="vit_pico_patch8_64", img_size=64, classes=list(SPACE))
    full, pruned = tmp_path / "sketch", tmp_path / "pruned"
    for i, wnid in enumerate([*SPACE, IMAGENET[500]]):
        _images(full / wnid, seed=i)
        if wnid in SPACE:
            _images(pruned / wnid, seed=i)
    _images(tmp_path / "a" / SPACE[1], seed=1)
    _images(tmp_path / "a" / IMAGENET[7], seed=7)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--suite", "imagenet-sketch", "imagenet-sketch", "imagenet-a",
                 "--data", str(full), str(pruned), str(tmp_path / "a"), "--out", *(str(tmp_path / f"{n}.json")
                 for n in ("full", "pruned", "a")), "--workers", "0", "--crop-pct", "1.0", "--no-mlflow"]) == 0
    r_full, r_pruned, r_a = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("full", "pruned", "a"))
    assert (r_full["top1"], r_full["images"]) == (r_pruned["top1"], r_pruned["images"]) and r_full["images"] == 4
    assert (r_full["label_space"], r_full["classes"], r_full["skipped_classes"]) == (2, 2, 1)
    assert r_pruned["skipped_classes"] == 0
    assert (r_a["classes"], r_a["skipped_classes"], r_a["images"]) == (1, 1, 2)


def test_the_caption_says_when_a_set_was_evaluated_on_part_of_its_classes(tmp_path):
    rows = [{"arm": arm, "run": arm, "model": f"{arm}_pico_patch8_64", "seed": 0, "clean": 50.0, "in_c": 90.0,
             "in_a": 10.0, "in_r": 20.0, "in_sk": 30.0, "fgsm": 25.0, "pgd": 12.5, "label_space": 100, "skipped": skipped}
            for arm, skipped in (("vit", True), ("absvit", False))]
    table3(pd.DataFrame(rows), tmp_path)
    assert "label space of 100 classes" in (tmp_path / "table3.tex").read_text()
    table3(pd.DataFrame(rows).assign(skipped=False), tmp_path)
    assert "label space" not in (tmp_path / "table3.tex").read_text()


def test_a_label_space_mismatch_is_one_line_at_planning_time(tmp_path, paper_datasets):
    """The paper preset's val lacks a class its training set has, and its IN-R holds none of them: the dry run
    fails before the DAG is built, naming the config key, the folder and the runs."""
    def edit(config):
        paper_config(config, paper_datasets, small=False)
        data = config["presets"]["paper"]["data"]
        val, r = tmp_path / "val-data", tmp_path / "imagenet-r"
        shutil.copytree(paper_datasets / "imagenet", val)
        shutil.rmtree(sorted((val / "val").iterdir())[0])
        _images(r / IMAGENET[3])
        data.update(imagenet=str(val), imagenet_r=str(r))

    (tmp_path / "wd").mkdir()
    out = dry_run("--config", "preset=paper", cwd=workflow_copy(tmp_path / "wd", edit))
    assert out.returncode != 0 and "Building DAG" not in out.stderr
    lines = [line.strip() for line in out.stderr.splitlines() if line.strip().startswith("presets.paper.data.")]
    assert len(lines) == 2, out.stderr
    assert lines[0].startswith(f"presets.paper.data.imagenet (clean): {tmp_path / 'val-data' / 'val'}: 1 of the 3 "
                               "classes are missing") and lines[0].endswith("(runs: absvit_tiny, absvit_tiny_novar, vit_tiny)")
    assert lines[1].startswith(f"presets.paper.data.imagenet_r (imagenet-r): {tmp_path / 'imagenet-r' / IMAGENET[3]}: "
                               f"class '{IMAGENET[3]}' is not in the label space of 3 classes"), lines

def test_suite_problems_reads_every_imagenet_c_shard(tmp_path, paper_datasets):
    assert suite_problems("imagenet-c", paper_datasets / "imagenet-c", sorted(p.name for p in (paper_datasets / "imagenet" / "train").iterdir())) == []
    (one,) = suite_problems("imagenet-c", paper_datasets / "imagenet-c", ["n90000001", "n90000002"])
    assert "is not in the label space of 2 classes" in one
