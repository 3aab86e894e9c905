"""The paper preset run for real on CPU: its own config (models, recipes, transforms, every stage), with only
the data paths, iteration counts, batch sizes, crop sizes and the machine's resources overridden.

The data are small sets in the published layouts (ImageNet train/val with wnid folders at 224 px, a 75-folder
ImageNet-C tree, A/R/Sketch, VOC / Cityscapes / ADE20K, scenes with a manifest) and official-layout base-size
checkpoints for the segmentation backbones. Three classes of the embedded generator stand in for ImageNet's,
so the runs' label space is not ImageNet-1k: what a subset study meets.
"""
import json
import subprocess
import time

import pytest
import torch
import yaml

from tests.helpers import PAPER_CLASSES, SNAKEMAKE, paper_config, workflow_copy

@pytest.mark.slow
def test_the_paper_preset_runs_every_stage_for_real(tmp_path, paper_datasets):
    wd = workflow_copy(tmp_path, lambda c: paper_config(c, paper_datasets))
    start = time.monotonic()
    out = subprocess.run([SNAKEMAKE, "--cores", "2", "all", "--config", "preset=paper"], cwd=wd, capture_output=True,
                         text=True)
    seconds = time.monotonic() - start
    logs = "".join(f"\n== {p}\n" + p.read_text()[-3000:] for p in (wd / "results/paper/logs").rglob("*.log"))
    assert out.returncode == 0, out.stderr[-6000:] + logs
    print(f"paper preset DAG: {seconds:.0f} s")
    res = wd / "results" / "paper"
    paper = yaml.safe_load((wd / "config.yaml").read_text())["presets"]["paper"]
    for run, spec in paper["runs"].items():  # every run trained at 224 px and evaluated on every suite
        model = torch.load(res / "pretrain" / run / "s0" / "model.pth", weights_only=True)
        assert (model["arch"], model["img_size"], model["classes"]) == (spec["model"], 224, list(PAPER_CLASSES))
        for suite in ("clean", "imagenet-c", "imagenet-a", "imagenet-r", "imagenet-sketch"):
            r = json.loads((res / "eval" / run / "s0" / f"{suite}.json").read_text())
            assert r["model"] == spec["model"] and r["label_space"] == len(PAPER_CLASSES) and r["skipped_classes"] == 0
        c = json.loads((res / "eval" / run / "s0" / "imagenet-c.json").read_text())
        assert "CenterCrop(size=(224, 224))" in c["transform"] and "Resize" not in c["transform"]
    for backbone in ("resnet101", "vit", "absvit"):
        for dataset in ("voc", "cityscapes", "ade20k"):
            r = json.loads((res / "segment" / backbone / dataset / "s0" / "result.json").read_text())
            assert r["iterations"] == 2 and r["model"] == paper["segmentation"]["backbones"][backbone]["model"]
    tables = res / "tables"
    for stem in ("table1", "table2", "table3", "figures", "cost"):
        assert (tables / f"{stem}.tex").is_file(), stem
    t2 = (tables / "table2.md").read_text()
    assert "AbSViT-Ti w/o L_var" in t2 and "AbSViT-Ti w/ L_var" in t2
    assert "ViT-B" in (tables / "table1.md").read_text() and "AbSViT-B" in (tables / "table1.md").read_text()
    figures = json.loads((res / "figures" / "s0" / "figures.json").read_text())
    assert figures["absvit"]["model"] == "absvit_tiny_patch16_224" and figures["pairs"] > 0
