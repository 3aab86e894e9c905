"""`absvit plan`: the bill of a preset before launch, from the real config.yaml and the jobs Snakemake plans."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from absvit import plan
from absvit.cli import main
from absvit.errors import UsageError
from absvit.throughput import CPU_REF, DEFAULT_LOADER
from tests.helpers import ROOT, workflow_copy, write_benchmark

CONFIG = ROOT / "config.yaml"
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000


@pytest.fixture(scope="module")
def cfg():
    return plan.load_config(CONFIG)


@pytest.fixture(scope="module")
def paper_dag():
    """The paper preset's jobs as Snakemake plans them: its /datasets paths do not exist here."""
    return plan.workflow_dag(CONFIG, "paper")


@pytest.fixture(scope="module")
def embedded_dag():
    return plan.workflow_dag(CONFIG, "embedded")


def _workflow_copy(tmp_path: Path, edit) -> Path:
    """The config.yaml of a copy of the workflow whose config was changed by ``edit(config)``."""
    return workflow_copy(tmp_path, edit) / "config.yaml"


def _stage(p: plan.Plan, name: str) -> plan.Stage:
    return next(s for s in p.stages if s.stage == name)


SUITE_IMAGES = {"clean": IMAGENET_VAL, "imagenet-c": 75 * IMAGENET_VAL, "imagenet-a": 7_500, "imagenet-r": 30_000,
                "imagenet-sketch": 50_889, "fgsm": IMAGENET_VAL, "pgd": IMAGENET_VAL}
PASSES = {"fgsm": 4, "pgd": 16}  # forward passes per image: an attack step counts 3, plus the classification


def _pretrain_job_s(loop: float, step: float, train_core: float, eval_core: float, *, gpus: int = 8, cores: int = 64,
                    epochs: int = 300) -> float:
    """One pretraining job by hand: the train split at the slower of the loop (per GPU x 8) and the training
    transform on 64 loader cores (8 workers x 8 GPU processes, of the 80 CPUs), + each epoch's two validation
    passes (model and EMA) at the slower of 3 x the step and the evaluation transform."""
    return (epochs * IMAGENET_TRAIN / min(loop * gpus, train_core * cores)
            + epochs * 2 * IMAGENET_VAL / min(3 * step * gpus, eval_core * cores))


def _evaluate_job_s(step: float, eval_core: float, c_core: float, cores: int = 10) -> float:
    """One evaluation job on one GPU with 10 loader workers: per suite the slower of its forward passes at 3 x the
    step and its images through its transform (ImageNet-C's 224-px JPEGs: ``c_core``)."""
    return sum(max(n * PASSES.get(s, 1) / (3 * step), n / ((c_core if s == "imagenet-c" else eval_core) * cores))
               for s, n in SUITE_IMAGES.items())


PAPER_EVAL_STEPS = [3998, 3998, 8459, 3998 / 4, 8459 / 4]  # AbSViT-Ti x 2, ViT-Ti, the patch-8 GAP pair (4x tokens)


def test_paper_plan_prints_every_stage_with_hand_checked_gpu_hours(cfg, paper_dag):
    p = plan.make_plan(CONFIG, "paper", dag=paper_dag, count_files=False)
    paper = cfg["presets"]["paper"]
    seeds = len(paper.get("seeds", [0]))
    text = p.to_text()
    assert [s.stage for s in p.stages] == plan.stage_order({r: paper_dag.waits[r] for r in paper_dag.jobs if r != "all"})
    for stage, jobs in paper_dag.jobs.items():
        if stage != "all":
            assert re.search(rf"^ *{stage} +{len(jobs)} ", text, re.M), stage  # a row of the table
    assert "1 node x 8 GPU, 10 CPU/task, 256 GB, 1440 min" in text  # the pretraining request
    assert "published size (folder absent: /datasets/imagenet/train)" in text
    assert p.frame().gpu_hours.iloc[-1] > 0

    # Pretraining: AbSViT-Ti x 2 (with / without L_var) and ViT-Ti, 8 GPUs each, at the H200 defaults; the GAP
    # pair comes from released files. At the default loader rates every job is loader-bound.
    d = DEFAULT_LOADER
    absvit_loop, vit_loop = 3998 * 1077 / 1184, 8459 * 2093 / 2656
    jobs = [_pretrain_job_s(absvit_loop, 3998, d["pretrain"], d["eval"])] * 2 + \
        [_pretrain_job_s(vit_loop, 8459, d["pretrain"], d["eval"])]
    pre = _stage(p, "pretrain")
    assert pre.jobs == 3 * seeds and pre.bound == "loader"
    assert pre.gpu_hours == pytest.approx(sum(jobs) * seeds * 8 / 3600)
    assert pre.job_s == pytest.approx(max(jobs))

    # Segmentation: (20k VOC + 40k Cityscapes at twice the pixels + 160k ADE20K) iterations x the step of
    # ResNet-101 (ViT-B's stands in), ViT-B and AbSViT-B, batch 16, on 8 GPUs: the GPUs bound it (16 crops per step
    # need 16 / (32 cores x 49 img/s) = 0.01 s of loading).
    seg = _stage(p, "segment")
    assert seg.jobs == 9 * seeds and seg.bound == "GPU"
    assert seg.gpu_hours == pytest.approx((20_000 + 2 * 40_000 + 160_000) * (0.301 + 0.301 + 0.344) / 3600 * seeds)
    assert seg.job_s == pytest.approx(160_000 * 0.344 / 8)

    # Evaluation: five runs, one GPU and 10 loader workers each; ImageNet-C (95 % of the images) is GPU-bound at the
    # uint8 transform's rate, the 500x375 JPEGs of clean / A / R / Sketch are loader-bound.
    ev = _stage(p, "evaluate")
    assert ev.jobs == 5 * seeds
    assert ev.gpu_hours == pytest.approx(seeds * sum(_evaluate_job_s(s, d["eval"], d["imagenet_c"])
                                                     for s in PAPER_EVAL_STEPS) / 3600)
    assert ev.bound.startswith("GPU; loader: clean") and "imagenet-c" not in ev.bound
    # V&L: the official recipe's effective batches by accumulation and their updates (10 epochs): VQA 443,757
    # train2014 questions in updates of 432, retrieval Karpathy train + val (150,070 captions) in updates of 512, each
    # caption with 15 negatives and an ITM pair; step rates / 1.5 on 8 GPUs, evaluation at 3x that
    assert "vqa absvit_base_patch16_224: 10 x 443,757 pairs, batch 432 per update (8 GPUs x 18 x 3 accumulated), " \
           "10,270 updates" in text
    assert "retrieval absvit_base_patch16_224: 10 x 2,551,190 pairs, batch 512 per update (8 GPUs x 4 x 16 " \
           "accumulated), 2,930 updates" in text
    # 64 loader cores x 141 img/s = 9,024 images/s: ViT-B's VQA training (8 x 2,656 / 1.5 = 14,165 pairs/s) and
    # both encoders' VQA evaluation (an image per val question, read twice: the accuracy and its image-blind control)
    # wait for the loader
    cores = 64 * d["vl"]
    vl = [10 * max(pairs / (step * 8 / 1.5), samples / cores) + max(evaluated / (3 * step * 8 / 1.5), images / cores)
          for step in (1184, 2656) for pairs, samples, evaluated, images in
          ((443_757, 443_757, 2 * 214_354, 2 * 214_354), (150_070 * 17, 150_070, 5_000_000, 1_000))]
    assert _stage(p, "vl").gpu_hours == pytest.approx(sum(vl) * seeds * 8 / 3600)
    assert _stage(p, "vl").bound == "GPU; loader: vqa/vit"
    assert not {"imagenet_c", "embedded_dataset", "scenes"} & {s.stage for s in p.stages}  # real data: no data prep
    assert "issue" not in text.lower() and not re.search(r"\b(?=\w*\d)(?=\w*[a-f])[0-9a-f]{7,40}\b", text)  # sources a user can check


def test_a_gpu_benchmark_json_replaces_the_defaults(paper_dag, tmp_path):
    bench = tmp_path / "gpu.json"
    bench.write_text(json.dumps({"card": "NVIDIA H100 80GB HBM3", "rows": [
        {"kind": "loop", "model": "absvit_tiny_patch16_224", "batch": 256, "img_size": 224, "compiled": True, "img_s": 5000.0},
        {"kind": "loop", "model": "absvit_tiny_patch16_224", "batch": 256, "img_size": 224, "compiled": False, "img_s": 4000.0},
        {"kind": "step", "model": "absvit_tiny_patch16_224", "batch": 256, "img_size": 224, "compiled": True, "img_s": 6000.0},
        {"kind": "step", "model": "vit_tiny_patch16_224", "batch": 256, "img_size": 224, "compiled": False, "img_s": 9000.0},
        {"kind": "segment", "model": "absvit_base_patch16_224", "batch": 16, "crop": [512, 512], "step_s": 0.1}]}))
    fast = tmp_path / "loader.json"  # loader cores fast enough for the GPUs to bound every stage
    fast.write_text(json.dumps({"machine": "m", "rows": [{"transform": t, "img_s_per_core": 10_000.0}
                                                          for t in ("pretrain", "eval", "imagenet_c", "vl", "segment")]}))
    default = plan.make_plan(CONFIG, "paper", dag=paper_dag, loader_bench=fast, count_files=False)
    p = plan.make_plan(CONFIG, "paper", dag=paper_dag, gpu_bench=bench, loader_bench=fast, count_files=False)
    seeds = len(p.seeds)
    assert p.gpu_bench == str(bench) and "NVIDIA H100 80GB HBM3" in p.to_text()
    assert all(s.bound == "GPU" for s in p.stages if s.gpus_per_job)

    # The fastest measured loop of AbSViT-Ti; ViT-Ti's loop from its measured step x the loop share.
    jobs = [_pretrain_job_s(5000, 6000, 10_000, 10_000)] * 2 + [_pretrain_job_s(9000 * 2093 / 2656, 9000, 10_000, 10_000)]
    pre = _stage(p, "pretrain")
    assert pre.gpu_hours == pytest.approx(sum(jobs) * seeds * 8 / 3600)
    assert pre.gpu_hours < _stage(default, "pretrain").gpu_hours
    assert f"{bench} (NVIDIA H100 80GB HBM3): loop absvit_tiny_patch16_224 batch 256 compiled" in pre.source

    # AbSViT-B's measured segmentation step; ViT-B and ResNet-101 (not in the file) keep the default.
    seg = _stage(p, "segment")
    assert seg.gpu_hours == pytest.approx((20_000 + 2 * 40_000 + 160_000) * (0.301 + 0.301 + 0.1) / 3600 * seeds)
    assert "not in the GPU benchmark" in seg.source


def test_a_loader_benchmark_json_sets_each_stages_loader_rate(paper_dag, tmp_path):
    """Hand-made per-core rates, slow enough to move every GPU stage's bound; the arithmetic by hand."""
    bench = tmp_path / "loader.json"
    bench.write_text(json.dumps({"machine": "login01 (x86_64), 1 thread", "measured_at": "2026-12-05", "rows": [
        {"transform": "pretrain", "source": "500x375 JPEG", "img_s_per_core": 100.0},
        {"transform": "eval", "source": "500x375 JPEG", "img_s_per_core": 200.0},
        {"transform": "imagenet_c", "source": "224x224 JPEG", "img_s_per_core": 1000.0},
        {"transform": "vl", "source": "640x480 JPEG", "img_s_per_core": 50.0},
        {"transform": "segment", "source": "683x512 JPEG", "img_s_per_core": 10.0}]}))
    p = plan.make_plan(CONFIG, "paper", dag=paper_dag, loader_bench=bench, count_files=False)
    seeds = len(p.seeds)
    assert p.loader_bench == str(bench) and "login01 (x86_64), 1 thread, 2026-12-05" in p.to_text()

    # Pretraining: 64 cores x 100 img/s = 6,400 img/s of training, 64 x 200 of validation: every job loader-bound
    # (300 x 1,281,167 / 6,400 = 60,054.7 s, + 300 x 2 x 50,000 / 12,800 = 2,343.75 s).
    pre = _stage(p, "pretrain")
    assert pre.job_s == pytest.approx(62_398.5, abs=0.1) and pre.bound == "loader"
    assert pre.gpu_hours == pytest.approx(3 * 62_398.45 * 8 / 3600 * seeds, rel=1e-5)

    # Evaluation, AbSViT-Ti (3 x 3,998 img/s of forward passes; 10 cores): clean 50,000 / 2,000 = 25 s, IN-C
    # 3,750,000 / 10,000 = 375 s, A 3.75 s, R 15 s, Sketch 25.4445 s, FGSM 25 s (its 200,000 passes: 16.7 s on the
    # GPU), PGD 800,000 / 11,994 = 66.70 s on the GPU.
    assert _evaluate_job_s(3998, 200, 1000) == pytest.approx(25 + 375 + 3.75 + 15 + 25.4445 + 25 + 800_000 / 11_994)
    ev = _stage(p, "evaluate")
    assert ev.gpu_hours == pytest.approx(seeds * sum(_evaluate_job_s(s, 200, 1000) for s in PAPER_EVAL_STEPS) / 3600)
    assert ev.bound.startswith("GPU; loader: ")

    # Segmentation: 32 loader cores (4 workers x 8 processes) x 10 img/s: a batch of 16 every 0.05 s, slower than
    # the GPUs' 512x512 step (<= 0.344 / 8 s) but not Cityscapes' 512x1024 (2 x the step / 8).
    seg = _stage(p, "segment")
    cityscapes = 40_000 * 8 * (0.301 * 2 / 8 + 0.301 * 2 / 8 + 0.344 * 2 / 8)
    assert seg.gpu_hours == pytest.approx((3 * 180_000 * 0.05 * 8 + cityscapes) / 3600 * seeds)
    assert seg.bound == "GPU; loader: " + ", ".join(f"{b}/{d}" for b in ("absvit", "resnet101", "vit")
                                                     for d in ("ade20k", "voc"))

    # V&L: 64 cores x 50 img/s = 3,200 images/s; VQA's 443,757 questions (one image each) outlast the GPUs
    # (8 x step / 1.5 pairs/s) and so do its 214,354 val questions (read twice); retrieval stays GPU-bound.
    vl = [10 * max(443_757 / (step * 8 / 1.5), 443_757 / 3200) + 2 * max(214_354 / (3 * step * 8 / 1.5), 214_354 / 3200)
          + 10 * 150_070 * 17 / (step * 8 / 1.5) + 5_000_000 / (3 * step * 8 / 1.5) for step in (1184, 2656)]
    assert _stage(p, "vl").gpu_hours == pytest.approx(sum(vl) * seeds * 8 / 3600)
    assert _stage(p, "vl").bound == "GPU; loader: vqa/absvit, vqa/vit"


@pytest.mark.parametrize("flag, content, message", [
    ("--gpu-bench", None, "no such file"),
    ("--gpu-bench", "{not json", "not a JSON file"),
    ("--gpu-bench", '{"card": "x", "rows": [{"kind": "loop", "model": "absvit_tiny_patch16_224"}]}',
     r"rows\[0\] \(loop, absvit_tiny_patch16_224\): expected img_s > 0"),
    ("--gpu-bench", '{"card": "x", "rows": [{"kind": "segment", "model": "m", "batch": 16, "crop": 512, "step_s": 0.3}]}',
     r"rows\[0\] \(segment, m\)"),
    ("--gpu-bench", '[1, 2]', "expected an object with `card` and a `rows` list"),
    ("--loader-bench", None, "no such file"),
    ("--loader-bench", "{not json", "not a JSON file"),
    ("--loader-bench", '{"machine": "m", "rows": [{"transform": "eval", "img_s_per_core": 0}]}',
     r"rows\[0\]: expected a `transform` name"),
    ("--loader-bench", '{"machine": "m"}', "expected an object with `machine` and a `rows` list"),
])
def test_a_missing_or_bad_benchmark_file_is_a_usage_error_naming_the_path(paper_dag, tmp_path, flag, content, message,
                                                                          capsys):
    bench = tmp_path / "bench.json"
    if content is not None:
        bench.write_text(content)
    with pytest.raises(UsageError, match=f"{flag} {bench}: {message}"):
        plan.make_plan(CONFIG, "paper", dag=paper_dag, count_files=False, **{flag[2:].replace("-", "_"): bench})
    assert main(["plan", "--config", str(CONFIG), "--preset", "paper", flag, str(bench)]) == 2
    assert f"absvit plan: error: {flag} {bench}: " in capsys.readouterr().err


def test_cli_prints_the_plan_and_writes_json(paper_dag, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--config", str(CONFIG), "--preset", "paper", "--published-sizes", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Plan for preset 'paper'") and "Critical path" in text and "Sources:" in text
    data = json.loads(out.read_text())
    assert {s["stage"]: s["jobs"] for s in data["stages"]} == {r: len(j) for r, j in paper_dag.jobs.items() if r != "all"}
    assert data["total"]["gpu_hours"] == pytest.approx(sum(s["gpu_hours"] or 0 for s in data["stages"]))
    assert all(s["source"] for s in data["stages"])
    assert main(["plan", "--config", str(CONFIG), "--preset", "papr"]) == 2
    assert "did you mean 'paper'?" in capsys.readouterr().err


def test_embedded_plan_is_cpu_only_and_uses_a_previous_runs_benchmarks(cfg, embedded_dag, tmp_path):
    p = plan.make_plan(CONFIG, "embedded", dag=embedded_dag)
    emb = cfg["presets"]["embedded"]
    assert p.frame().gpu_hours.iloc[-1] == 0
    assert _stage(p, "imagenet_c").jobs == 75 and _stage(p, "pretrain").jobs == 3 * len(emb["seeds"])
    assert CPU_REF in _stage(p, "pretrain").source
    # a fresh clone (no previous run) prices every stage, the V&L and figure stages by the measured embedded run
    assert not [s.stage for s in p.stages if s.job_s != s.job_s], p.to_text()
    assert {_stage(p, r).job_s for r in ("vl", "vl_figure", "decoder", "figures")} == {24.9, 13.2, 5.1, 11.3}
    assert _stage(p, "imagenet_c").request == "1 node, no GPU, 1 CPU/task, 2 GB, 30 min"  # resources.imagenet_c

    bench = tmp_path / "benchmarks"
    for rel, seconds in (("pretrain/absvit-s0.tsv", 100.0), ("pretrain/vit-s0.tsv", 50.0), ("imagenet_c/fog-1.tsv", 2.0)):
        write_benchmark(bench / rel, seconds, seconds)
    p = plan.make_plan(CONFIG, "embedded", dag=embedded_dag, results=bench)
    pre = _stage(p, "pretrain")
    assert pre.wall_s == pytest.approx(75.0 * pre.jobs) and "previous run: mean 75.0 s/job of 2" in pre.source
    assert pre.cpu_core_hours == pytest.approx(pre.wall_s * emb["resources"]["pretrain"]["cpus_per_task"] / 3600)
    assert _stage(p, "imagenet_c").wall_s == pytest.approx(150.0)


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


def test_the_jobs_are_snakemakes_before_the_data_exist(tmp_path):
    """More seeds and a released checkpoint that is not on this machine: Snakemake plans the jobs (plan-only)."""
    def edit(c):
        paper = c["presets"]["paper"]
        paper.update(seeds=[0, 1], checkpoints={**paper["checkpoints"], "absvit_tiny": "/checkpoints/absvit_tiny.pth"})

    jobs = plan.workflow_dag(_workflow_copy(tmp_path, edit), "paper").jobs
    counts = {rule: len(js) for rule, js in jobs.items()}
    assert counts == {"pretrain": 2 * 2, "evaluate": 2 * 2 + 3, "segment": 3 * 3 * 2, "decoder": 1, "figures": 1,
                      "lvar_ablation": 1, "robustness_comparison": 1, "released": 1, "tables": 1,
                      "vl": 2 * 2 * 2,  # task x encoder x seed: the encoders' files are fine-tuned under each seed
                      "all": 1}  # released files (absvit_tiny, the GAP pair): evaluated once, set beside their numbers
    assert {"run": "absvit_tiny", "seed": "0"} in jobs["evaluate"] and {"run": "absvit_tiny", "seed": "1"} not in jobs["evaluate"]
    assert {"backbone": "absvit", "dataset": "ade20k", "seed": "1"} in jobs["segment"]


def test_plan_only_runs_no_job(tmp_path):
    """`--config plan_only=True` lists jobs; a run that would execute them is refused before the first starts."""
    config = _workflow_copy(tmp_path, lambda c: None)
    out = subprocess.run([sys.executable, "-m", "snakemake", "tables", "--cores", "1", "--workflow-profile", "none",
                          "--config", "preset=paper", "plan_only=True"], cwd=config.parent, capture_output=True, text=True)
    assert out.returncode != 0 and "config key 'plan_only': True lists the jobs" in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()


def test_a_rule_the_plan_does_not_know_is_listed_with_its_jobs_and_request(tmp_path):
    """A rule added to the workflow (one job per run, after evaluation) with a SLURM request in the config."""
    def edit(c):
        c["presets"]["paper"]["resources"]["probe"] = {"threads": 1, "timeout_min": 90, "gpus_per_node": 2,
                                                       "cpus_per_task": 4, "mem_gb": 32}

    config = _workflow_copy(tmp_path, edit)
    schema = tmp_path / "workflow" / "schemas" / "config.schema.yaml"
    schema.write_text(schema.read_text().replace("          segment: {$ref: \"#/$defs/resources\"}\n",
                                                 "          segment: {$ref: \"#/$defs/resources\"}\n"
                                                 "          probe: {$ref: \"#/$defs/resources\"}\n"))
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(snakefile.read_text().replace("        figure_outputs(),\n", "        figure_outputs(),\n"
                                                       "        expand(OUT / 'probe' / '{run}.txt', run=RUNS),\n")
                         + "\n\nrule probe:\n    input: lambda wc: eval_outputs([wc.run])\n"
                           "    output: OUT / 'probe' / '{run}.txt'\n    shell: 'touch {output}'\n")
    p = plan.make_plan(config, "paper", count_files=False)
    probe = _stage(p, "probe")
    assert probe.jobs == 5 and probe.request == "1 node x 2 GPU, 4 CPU/task, 32 GB, 90 min"
    assert probe.source.startswith("not estimated") and re.search(r"^ *probe +5 +1 node x 2 GPU.* \? +\? +\? +\? +-$",
                                                                   p.to_text(), re.M)
    assert [s.stage for s in p.stages].index("probe") > [s.stage for s in p.stages].index("evaluate")
    assert p.frame().jobs.iloc[-1] == sum(s.jobs for s in p.stages) and any("marked ?" in n for n in p.notes)


def test_a_dry_run_whose_listing_disagrees_with_its_job_stats_is_refused():
    listing = "rule pretrain:\n    wildcards: run=vit, seed=0\n\nJob stats:\njob count\n--- -----\npretrain 2\ntotal 2\n\n"
    with pytest.raises(UsageError, match="could not read Snakemake's dry run"):
        plan.parse_dry_run(listing)
    jobs = plan.parse_dry_run(listing.replace("pretrain 2\ntotal 2", "pretrain 1\ntotal 1"))
    assert jobs == {"pretrain": [{"run": "vit", "seed": "0"}]}
