"""The `released` preset: the official release's eight files re-measured beside their published numbers."""
import argparse
import json
import shutil

import pandas as pd
import pytest
import torch

from absvit import plan
from absvit.cli import main
from absvit.data.corruptions import CORRUPTIONS, SEVERITIES
from absvit.released import RELEASED
from tests.helpers import dry_run, job_counts, workflow_copy
from tests.latex import compile_tables

NUMBERS = {"absvit_tiny": ("absvit_tiny_patch16_224", {"clean": 73.9, "imagenet-c": 67.2, "imagenet-a": 10.5,
                                                       "imagenet-r": 35.0, "imagenet-sketch": 22.0, "fgsm": 40.25,
                                                       "pgd": 20.5}),
           "vit_tiny_gap": ("vit_tiny_patch8_224_gap", {"clean": 75.0, "imagenet-c": 60.0, "imagenet-a": 9.0,
                                                        "imagenet-r": 30.0, "imagenet-sketch": 20.0, "fgsm": 35.0,
                                                        "pgd": 15.0})}


def _eval_dirs(root):
    """Eval folders as `absvit evaluate` writes them, for a released AbSViT-Ti and the demo's patch-8 ViT."""
    dirs = {}
    for run, (model, numbers) in NUMBERS.items():
        d = dirs[run] = root / run / "s0"
        d.mkdir(parents=True)
        for suite, value in numbers.items():
            key = "mce" if suite == "imagenet-c" else "top1"
            (d / f"{suite}.json").write_text(json.dumps({"model": model, "suite": suite, key: value,
                                                         "checkpoint": f"/checkpoints/{model}.pth"}))
    return dirs


def test_the_table_sets_each_number_beside_the_published_one(tmp_path):
    dirs = _eval_dirs(tmp_path / "eval")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    evals = [f"{run}={d}" for run, d in dirs.items()]
    assert main(["released", "--eval", *evals, "--out-dir", str(tmp_path / "files"), "--label", "Released files.",
                 "--tracking-uri", uri]) == 0
    csv = pd.read_csv(tmp_path / "files" / "released.csv").set_index("run")
    tiny = csv.loc["absvit_tiny"]  # published: 74.1 top-1, 66.7 mCE
    assert (tiny.top1_published, tiny.clean, tiny.top1_difference) == (74.1, 73.9, pytest.approx(-0.2))
    assert (tiny.mce_published, tiny.in_c, tiny.mce_difference) == (66.7, 67.2, pytest.approx(0.5))
    assert (tiny.fgsm, tiny.pgd, tiny.Model) == (40.25, 20.5, "AbSViT-Ti")
    gap = csv.loc["vit_tiny_gap"]  # the demo's pair has no published numbers
    assert pd.isna(gap.top1_published) and pd.isna(gap.top1_difference) and gap.clean == 75.0
    md = (tmp_path / "files" / "released.md").read_text()
    assert "| AbSViT-Ti | 74.1 | 73.9 | -0.2 | 66.7 | 67.2 | +0.5 | 10.5 | 35.0 | 22.0 | 40.2 | 20.5 |" in md
    assert "| vit_tiny_patch8_224_gap | -- | 75.0 | -- | -- | 60.0 | -- |" in md and "Released files." in md
    tex = (tmp_path / "files" / "released.tex").read_text()
    assert r"AbSViT-Ti & 74.1 & 73.9 & -0.2 & 66.7 & 67.2 & +0.5" in tex and r"\multicolumn{3}{c}{ImageNet top-1}" in tex
    compile_tables([tmp_path / "files" / "released.tex"], tmp_path / "latex")

    # the store alone gives the same files
    shutil.rmtree(tmp_path / "eval")
    assert main(["released", "--from-mlflow", "--out-dir", str(tmp_path / "store"), "--tracking-uri", uri]) == 0
    for ext in ("csv", "md", "tex"):
        assert (tmp_path / "store" / f"released.{ext}").read_bytes() == (tmp_path / "files" / f"released.{ext}").read_bytes()


def _imagenet_layout(root, wnids):
    """Folder names of every published layout, ImageNet-1k's classes (planning reads names only)."""
    for folder in ("imagenet/train", "imagenet/val", "sketch"):
        for wnid in wnids:
            (root / folder / wnid).mkdir(parents=True)
    for c in CORRUPTIONS:
        for s in SEVERITIES:
            for wnid in wnids:
                (root / "imagenet-c" / c / str(s) / wnid).mkdir(parents=True)
    for folder in ("imagenet-a", "imagenet-r"):
        for wnid in wnids[:200]:
            (root / folder / wnid).mkdir(parents=True)


@pytest.fixture(scope="module")
def released_data(tmp_path_factory):
    from timm.data import ImageNetInfo

    root = tmp_path_factory.mktemp("released")
    _imagenet_layout(root, list(ImageNetInfo("imagenet-1k").label_names()))
    (root / "checkpoints").mkdir()
    for model in RELEASED:  # the official layout (planning reads what a file records, not its weights)
        torch.save({"model": {}, "args": argparse.Namespace(model=model, input_size=224)},
                   root / "checkpoints" / f"{model}.pth")
    return root


def _released_preset(config, root, drop=()):
    preset = config["presets"]["released"]
    preset["data"] = {"imagenet": str(root / "imagenet"), "imagenet_c": str(root / "imagenet-c"),
                      "imagenet_a": str(root / "imagenet-a"), "imagenet_r": str(root / "imagenet-r"),
                      "imagenet_sketch": str(root / "sketch")}
    preset["checkpoints"] = {run: str(root / "checkpoints" / f"{spec['model']}.pth") for run, spec in preset["runs"].items()
                             if run not in drop}
    del preset["figures"]


def test_the_preset_plans_every_file_on_paper_layout_data(tmp_path, released_data):
    wd = workflow_copy(tmp_path, lambda c: _released_preset(c, released_data))
    out = dry_run("--config", "preset=released", cwd=wd)
    assert out.returncode == 0, out.stderr[-3000:]
    assert job_counts(out.stdout) == {"evaluate": 8, "released": 1, "tables": 1, "all": 1}  # no training, no tables 1-3
    p = plan.make_plan(wd / "config.yaml", "released", count_files=False)
    evaluate = next(s for s in p.stages if s.stage == "evaluate")
    assert evaluate.jobs == 8 and 1 < evaluate.gpu_hours < 10  # a few GPU-hours


def test_a_missing_file_is_named_with_its_download_address(tmp_path, released_data):
    def edit(config):
        _released_preset(config, released_data)
        config["presets"]["released"]["checkpoints"]["absvit_base"] = "/nonexistent/absvit_base.pth"

    out = dry_run("--config", "preset=released", cwd=workflow_copy(tmp_path, edit))
    assert out.returncode != 0 and "Building DAG" not in out.stderr
    (line,) = [line.strip() for line in out.stderr.splitlines() if "/nonexistent/" in line]
    assert line.startswith("presets.released.checkpoints.absvit_base: /nonexistent/absvit_base.pth does not exist")
    assert line.endswith(f"(download: {RELEASED['absvit_base_patch16_224'].url}))")
