"""The paper preset on data in the published layouts: it plans, it names what is missing, and its
ImageNet-C evaluation uses the official transform (centre crop only)."""
import json
import re

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from torchvision.transforms import functional as TF

from absvit.cli import main
from absvit.data.corruptions import CORRUPTIONS, SEVERITIES
from absvit.evaluate import Normalized, suite_transform
from tests.helpers import ROOT, dry_run, job_counts, official_checkpoint, paper_config, workflow_copy


def test_paper_preset_plans_every_stage_on_paper_layout_data(tmp_path, paper_datasets):
    wd = workflow_copy(tmp_path, lambda c: paper_config(c, paper_datasets, small=False))
    out = dry_run("--config", "preset=paper", "--printshellcmds", cwd=wd)
    assert out.returncode == 0, out.stderr
    paper = yaml.safe_load((wd / "config.yaml").read_text())["presets"]["paper"]
    runs, seg = len(paper["runs"]), paper["segmentation"]
    assert job_counts(out.stdout) == {
        "all": 1, "pretrain": runs, "evaluate": runs, "lvar_ablation": 1, "robustness_comparison": 1,
        "segment": len(seg["backbones"]) * len(seg["datasets"]), "decoder": 1, "figures": 1,
        "tables": 1}  # no data-prep jobs (nor scenes): the data exist
    # every job reads the configured folders, and IN-C is evaluated at the paper's 224 px
    assert f"--data {paper_datasets / 'imagenet'} " in out.stdout
    assert re.search(rf"--suite clean imagenet-c imagenet-a imagenet-r imagenet-sketch fgsm pgd --data \S+ {paper_datasets / 'imagenet-c'} .*--img-size 224 "
                     r"--crop-pct 0.875", out.stdout)
    assert f"--data {paper_datasets / 'seg' / 'cityscapes'} " in out.stdout


def test_missing_paths_fail_before_the_dag_one_line_each(tmp_path, paper_datasets):
    def edit(config):
        paper_config(config, paper_datasets, small=False)
        paper = config["presets"]["paper"]
        paper["data"]["imagenet_c"] = "/nonexistent/imagenet-c"
        paper["segmentation"]["datasets"]["ade20k"]["root"] = "/nonexistent/ade"

    out = dry_run("--config", "preset=paper", cwd=workflow_copy(tmp_path, edit))
    assert out.returncode != 0
    lines = [line.strip() for line in out.stderr.splitlines() if "/nonexistent/" in line]
    assert lines == [
        "presets.paper.data.imagenet_c: /nonexistent/imagenet-c does not exist (expected <corruption>/<1-5>/<wnid>/*.JPEG, "
        "or grouped <noise|blur|weather|digital>/<corruption>/<1-5>/<wnid>/)",
        "presets.paper.segmentation.datasets.ade20k.root: /nonexistent/ade does not exist "
        "(expected ADEChallengeData2016/{images,annotations}/{training,validation}/)"], out.stderr
    assert "names 2 path(s) that do not exist" in out.stderr and "Building DAG" not in out.stderr


def test_imagenet_c_transform_leaves_a_224_image_unchanged():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
    plain = TF.normalize(TF.to_tensor(image), timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)
    uint8 = suite_transform("imagenet-c", 224, 0.875, "bicubic")(image)  # uint8: normalised on the device
    assert uint8.dtype == torch.uint8 and torch.equal(Normalized(torch.nn.Identity()).normalize(uint8[None])[0], plain)
    # the other suites resize the short side to 256 and crop: the same image is zoomed in
    clean = Normalized(torch.nn.Identity()).normalize(suite_transform("clean", 224, 0.875, "bicubic")(image)[None])[0]
    assert clean.shape == plain.shape and not torch.allclose(clean, plain, atol=0.1)


def test_paper_imagenet_c_evaluation_of_a_released_checkpoint_uses_it(tmp_path, paper_datasets):
    """`absvit evaluate` with the paper preset's settings on 224-px ImageNet-C images and a file in the
    official release's layout: predictions are those of the un-resized pixels."""
    settings = yaml.safe_load((ROOT / "config.yaml").read_text())["presets"]["paper"]["evaluate"]
    wnids = sorted(p.name for p in (paper_datasets / "imagenet" / "train").iterdir())[:2]
    classes, tree = tmp_path / "classes", tmp_path / "imagenet-c"
    for wnid in wnids:
        (classes / wnid).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for c in CORRUPTIONS:
        for s in SEVERITIES:
            for wnid in wnids:
                (tree / c / str(s) / wnid).mkdir(parents=True)
                Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(tree / c / str(s) / wnid / "x.png")
    model = timm.create_model("vit_pico_patch8_64", num_classes=2, img_size=224).eval()
    released = tmp_path / "released.pth"  # official layout: weights under `model`, training args as a Namespace
    official_checkpoint(released, model, "vit_pico_patch8_64")

    assert main(["evaluate", "--checkpoint", str(released), "--suite", "imagenet-c", "--data", str(tree),
                 "--classes", str(classes), "--crop-pct", str(settings["crop_pct"]), "--batch-size", "50",
                 "--workers", "0", "--out", str(tmp_path / "c.json"), "--no-mlflow"]) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["img_size"] == settings["img_size"] == 224 and result["model"] == "vit_pico_patch8_64"
    assert "CenterCrop(size=(224, 224))" in result["transform"] and "Resize" not in result["transform"]
    with torch.no_grad():
        for c in ("gaussian_noise", "fog"):
            for s in SEVERITIES:
                images = torch.stack([TF.normalize(TF.to_tensor(Image.open(tree / c / str(s) / w / "x.png")),
                                                   timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)
                                      for w in wnids])
                hits = (model(images).argmax(-1) == torch.arange(2)).float().mean().item()
                assert result["top1"][c][str(s)] == pytest.approx(100 * hits)
