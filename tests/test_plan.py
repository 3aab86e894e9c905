"""`absvit plan`: the bill of a preset before launch, from the real config.yaml."""
import json
import re
from pathlib import Path

import pytest

from absvit import plan
from absvit.cli import main
from absvit.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000


@pytest.fixture(scope="module")
def cfg():
    return plan.load_config(CONFIG)


def _stage(p: plan.Plan, name: str) -> plan.Stage:
    return next(s for s in p.stages if s.stage == name)


def _pretrain_job_s(model: str, loop: float, step: float, gpus: int = 8, cpus: int = 80, epochs: int = 300) -> float:
    """One pretraining job by hand: the loop over the train split + each epoch's two validation passes
    (model and EMA) at min(3 x step, 150 img/s per loader CPU)."""
    return epochs * IMAGENET_TRAIN / (loop * gpus) + epochs * 2 * IMAGENET_VAL / min(3 * step * gpus, 150 * cpus)


def test_paper_plan_prints_every_stage_with_hand_checked_gpu_hours(cfg):
    p = plan.make_plan(cfg, "paper", count_files=False)
    paper = cfg["presets"]["paper"]
    seeds = len(paper.get("seeds", [0]))
    text = p.to_text()
    for stage in plan.STAGES:
        assert re.search(rf"^ *{stage} +\d+ ", text, re.M), stage  # a row of the table
    assert "1 node x 8 GPU, 10 CPU/task, 256 GB, 1440 min" in text  # the pretraining request
    assert "published size (folder absent: /datasets/imagenet/train)" in text
    assert p.frame().gpu_hours.iloc[-1] > 0

    # Pretraining: AbSViT-Ti x 2 (with / without L_var) and ViT-Ti, 8 GPUs each, at the issue-10 defaults.
    absvit_loop, vit_loop = 3998 * 1077 / 1184, 8459 * 2093 / 2656
    jobs = [_pretrain_job_s("absvit", absvit_loop, 3998)] * 2 + [_pretrain_job_s("vit", vit_loop, 8459)]
    pre = _stage(p, "pretrain")
    assert pre.jobs == 3 * seeds
    assert pre.gpu_hours == pytest.approx(sum(jobs) * seeds * 8 / 3600)
    assert pre.job_s == pytest.approx(max(jobs))

    # Segmentation: (20k VOC + 40k Cityscapes at twice the pixels + 160k ADE20K) iterations x the step of
    # ResNet-101 (ViT-B's stands in), ViT-B and AbSViT-B, batch 16, on 8 GPUs.
    seg = _stage(p, "segment")
    assert seg.jobs == 9 * seeds
    assert seg.gpu_hours == pytest.approx((20_000 + 2 * 40_000 + 160_000) * (0.301 + 0.301 + 0.344) / 3600 * seeds)
    assert seg.job_s == pytest.approx(160_000 * 0.344 / 8)

    # Evaluation: loader-bound at 10 CPUs x 150 img/s on one GPU.
    suites = 50_000 + 75 * 50_000 + 7_500 + 30_000 + 50_889
    assert _stage(p, "evaluate").gpu_hours == pytest.approx(3 * seeds * suites / 1500 / 3600)
    assert _stage(p, "imagenet_c_shard").jobs == 0 and _stage(p, "embedded_dataset").jobs == 0


def test_a_gpu_benchmark_json_replaces_the_defaults(cfg, tmp_path):
    bench = tmp_path / "gpu.json"
    bench.write_text(json.dumps({"card": "NVIDIA H100 80GB HBM3", "rows": [
        {"kind": "loop", "model": "absvit_tiny_patch16_224", "batch": 256, "img_size": 224, "compiled": True, "img_s": 5000.0},
        {"kind": "loop", "model": "absvit_tiny_patch16_224", "batch": 256, "img_size": 224, "compiled": False, "img_s": 4000.0},
        {"kind": "step", "model": "absvit_tiny_patch16_224", "batch": 256, "img_size": 224, "compiled": True, "img_s": 6000.0},
        {"kind": "step", "model": "vit_tiny_patch16_224", "batch": 256, "img_size": 224, "compiled": False, "img_s": 9000.0},
        {"kind": "segment", "model": "absvit_base_patch16_224", "batch": 16, "crop": [512, 512], "step_s": 0.1}]}))
    default = plan.make_plan(cfg, "paper", count_files=False)
    p = plan.make_plan(cfg, "paper", gpu_bench=bench, count_files=False)
    seeds = len(p.seeds)
    assert p.gpu_bench == str(bench) and "NVIDIA H100 80GB HBM3" in p.to_text()

    # The fastest measured loop of AbSViT-Ti; ViT-Ti's loop from its measured step x the loop share.
    jobs = [_pretrain_job_s("absvit", 5000, 6000)] * 2 + [_pretrain_job_s("vit", 9000 * 2093 / 2656, 9000)]
    pre = _stage(p, "pretrain")
    assert pre.gpu_hours == pytest.approx(sum(jobs) * seeds * 8 / 3600)
    assert pre.gpu_hours < _stage(default, "pretrain").gpu_hours
    assert f"{bench} (NVIDIA H100 80GB HBM3): loop absvit_tiny_patch16_224 batch 256 compiled" in pre.source

    # AbSViT-B's measured segmentation step; ViT-B and ResNet-101 (not in the file) keep the default.
    seg = _stage(p, "segment")
    assert seg.gpu_hours == pytest.approx((20_000 + 2 * 40_000 + 160_000) * (0.301 + 0.301 + 0.1) / 3600 * seeds)
    assert "not in the GPU benchmark" in seg.source


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not a JSON file"),
    ('{"card": "x", "rows": [{"kind": "loop", "model": "absvit_tiny_patch16_224"}]}', r"rows\[0\] \(loop, absvit_tiny_patch16_224\): expected img_s > 0"),
    ('{"card": "x", "rows": [{"kind": "segment", "model": "m", "batch": 16, "crop": 512, "step_s": 0.3}]}', r"rows\[0\] \(segment, m\)"),
    ('[1, 2]', "expected an object with `card` and a `rows` list"),
])
def test_a_missing_or_bad_gpu_benchmark_is_a_usage_error_naming_the_path(cfg, tmp_path, content, message, capsys):
    bench = tmp_path / "gpu.json"
    if content is not None:
        bench.write_text(content)
    with pytest.raises(UsageError, match=f"--gpu-bench {bench}: {message}"):
        plan.make_plan(cfg, "paper", gpu_bench=bench, count_files=False)
    assert main(["plan", "--config", str(CONFIG), "--preset", "paper", "--gpu-bench", str(bench)]) == 2
    assert f"absvit plan: error: --gpu-bench {bench}: " in capsys.readouterr().err


def test_cli_prints_the_plan_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--config", str(CONFIG), "--preset", "paper", "--published-sizes", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Plan for preset 'paper'") and "Critical path" in text and "Sources:" in text
    data = json.loads(out.read_text())
    assert [s["stage"] for s in data["stages"]] == list(plan.STAGES)
    assert data["total"]["gpu_hours"] == pytest.approx(sum(s["gpu_hours"] or 0 for s in data["stages"]))
    assert all(s["source"] for s in data["stages"])
    assert main(["plan", "--config", str(CONFIG), "--preset", "papr"]) == 2
    assert "did you mean 'paper'?" in capsys.readouterr().err


def test_embedded_plan_is_cpu_only_and_uses_a_previous_runs_benchmarks(cfg, tmp_path):
    p = plan.make_plan(cfg, "embedded")
    emb = cfg["presets"]["embedded"]
    assert p.frame().gpu_hours.iloc[-1] == 0
    assert _stage(p, "imagenet_c_shard").jobs == 75 and _stage(p, "pretrain").jobs == 3 * len(emb["seeds"])
    assert "embedded DAG on a 2-core machine" in _stage(p, "pretrain").source

    bench = tmp_path / "benchmarks"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, s in (("pretrain/absvit-s0.tsv", 100.0), ("pretrain/vit-s0.tsv", 50.0), ("imagenet_c/fog-1.tsv", 2.0)):
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_text(header + f"{s}\t0:00:00\t1\t1\t1\t1\t0\t0\t90\t{s}\n")
    p = plan.make_plan(cfg, "embedded", results=bench)
    pre = _stage(p, "pretrain")
    assert pre.wall_s == pytest.approx(75.0 * pre.jobs) and "previous run: mean 75.0 s/job of 2" in pre.source
    assert pre.cpu_core_hours == pytest.approx(pre.wall_s * emb["resources"]["pretrain"]["cpus_per_task"] / 3600)
    assert _stage(p, "imagenet_c_shard").wall_s == pytest.approx(150.0)


def test_dataset_sizes_are_counted_in_the_configured_folders(cfg, tmp_path):
    paper = json.loads(json.dumps(cfg["presets"]["paper"]))
    for split, n in (("imagenet/train/n01440764", 3), ("imagenet/val/n01440764", 2), ("a/n01498041", 4)):
        (tmp_path / split).mkdir(parents=True)
        for i in range(n):
            (tmp_path / split / f"{i}.JPEG").touch()
    paper["data"].update(imagenet=str(tmp_path / "imagenet"), imagenet_a=str(tmp_path / "a"))
    sizes = plan.dataset_sizes(paper)
    assert sizes["train"] == (3, f"counted in {tmp_path / 'imagenet' / 'train'}")
    assert sizes["clean"][0] == 2 and sizes["imagenet-a"][0] == 4
    assert sizes["imagenet-r"] == (30_000, "published size (folder absent: /datasets/imagenet-r)")
    assert plan.dataset_sizes(paper, count=False)["train"][0] == IMAGENET_TRAIN


def test_jobs_per_stage_follows_seeds_and_released_checkpoints(cfg):
    paper = json.loads(json.dumps(cfg["presets"]["paper"]))
    paper["seeds"] = [0, 1]
    paper["checkpoints"] = {"absvit_tiny": "/checkpoints/absvit_tiny.pth"}
    jobs = plan.jobs_per_stage(paper)
    assert list(jobs) == list(plan.STAGES)
    assert jobs["pretrain"] == 2 * 2  # absvit_tiny_novar, vit_tiny: once per seed
    assert jobs["evaluate"] == 2 * 2 + 1  # all five suites in one job; the released file: once
    assert jobs["segment"] == 3 * 3 * 2 and jobs["tables"] == 1
    assert jobs["figures"] == jobs["decoder"] == 1 and jobs["scenes"] == 0  # a released AbSViT file; scenes from a folder
    assert jobs["embedded_dataset"] == jobs["imagenet_c_shard"] == jobs["segmentation_dataset"] == 0
    embedded = plan.jobs_per_stage(cfg["presets"]["embedded"])
    assert embedded["imagenet_c_shard"] == 75 and embedded["embedded_dataset"] == embedded["segmentation_dataset"] == 1
