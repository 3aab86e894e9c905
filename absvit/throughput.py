"""Throughputs and dataset sizes behind ``absvit plan``'s expected times, each with where it comes from.

- GPU rates: the GPU benchmark's JSON when given (``make bench-gpu``, read by ``load_gpu_bench`` and
  ``Throughputs``), else the defaults measured on one NVIDIA H200 with the code of 2026-11-27, before that
  benchmark existed (``DEFAULT_STEP``, ``DEFAULT_LOOP``, ``DEFAULT_SEG_STEP``), plus two stated factors
  (``EVAL_SPEEDUP``, an assumption; ``DECODE_PER_CPU``, a lower bound from the same H200 run).
- CPU presets: per-job times of a run of the embedded DAG on a 2-core machine (``CPU_*``).
- Dataset sizes: counted in the configured folders when they exist, else the published sizes
  (``PUBLISHED``); a generated preset's sizes follow from its config (``dataset_sizes``).

``estimate_stage`` turns these into the seconds of each job of one rule of the workflow (work / throughput,
a previous run's mean per-job time, or unknown), with the formula and numbers used as its source;
``absvit.plan`` sums them into the plan.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from absvit.data import ATTACK_SUITES, SUITES
from absvit.errors import UsageError

# Published sizes (images) of the datasets, used when the configured folder does not exist; ImageNet-C is
# 15 corruptions x 5 severities of the 50,000 val images.
PUBLISHED = {"train": 1_281_167, "clean": 50_000, "imagenet-c": 15 * 5 * 50_000, "imagenet-a": 7_500,
             "imagenet-r": 30_000, "imagenet-sketch": 50_889}
DATA_KEYS = {"clean": "imagenet", "imagenet-c": "imagenet_c", "imagenet-a": "imagenet_a", "imagenet-r": "imagenet_r",
             "imagenet-sketch": "imagenet_sketch"}  # each suite's key under presets.<preset>.data (attacks: clean's)
# Measured on one NVIDIA H200 (bf16 autocast, channels-last, fused AdamW, eager) with the code of 2026-11-27.
H200 = "one NVIDIA H200, code of 2026-11-27, bf16, channels-last"
DEFAULT_STEP = {  # bare training step, img/s at 224 px (batch 256 for Ti/S, 128 for B)
    "vit_tiny_patch16_224": 8459, "absvit_tiny_patch16_224": 3998, "vit_small_patch16_224": 5757,
    "absvit_small_patch16_224": 2608, "vit_base_patch16_224": 2656, "absvit_base_patch16_224": 1184}
DEFAULT_LOOP = {"absvit_base_patch16_224": 1077, "vit_base_patch16_224": 2093}  # the real pretraining loop, batch 128
# The real loop's share of the bare step, measured at base size (EMA, mixup and the per-step sync make the
# difference); applied to the sizes whose loop was not measured.
LOOP_SHARE = {"absvit": 1077 / 1184, "vit": 2093 / 2656}
DEFAULT_SEG_STEP = {"absvit_base_patch16_224": 0.344, "vit_base_patch16_224": 0.301}  # UperNet, batch 16, 512x512
SEG_STANDIN = "vit_base_patch16_224"  # the stand-in for a backbone without a measured step (ResNet-101)
EVAL_SPEEDUP = 3.0  # inference (no backward, no optimizer) ~3x the training step: an assumption
DECODE_PER_CPU = 150.0  # img/s one loader CPU delivers: the H200 run's ViT-B loop got >= 2,093 img/s from 14 workers
# CPU presets: a run of the embedded DAG (the preset of 2026-11-28: 8 epochs of 2,400 train images, local
# launcher) on a 2-core machine, per job.
CPU_REF = "embedded DAG run on a 2-core machine, 2026-11-28"
CPU_PRETRAIN = {"absvit": 127.0, "vit": 223.0}  # img/s: 8 epochs x 2,400 images in 151 s / 86 s, validation included
CPU_EVAL = (10.0, 300.0)  # start-up s, img/s: 200 images in 12.4 s, 3,000 in 21.7 s
CPU_SEGMENT = (8.0, 0.042)  # start-up s, s per 64x64 crop trained: 60 iterations x batch 8 in ~28 s
CPU_SHARD = (0.8, 0.005)  # start-up s, s per image
CPU_FIXED = {  # s per job of the local stages (any preset), and where it was measured
    **{rule: (s, CPU_REF) for rule, s in (("embedded_dataset", 5.9), ("segmentation_dataset", 1.9),
                                          ("lvar_ablation", 3.9), ("robustness_comparison", 3.2), ("tables", 0.8))},
    "vl_data": (7.6, "embedded DAG run on a 2-core machine, 2026-12-03 (32 V&L train scenes)"),
    "released": (4.1, "embedded run's 3 evaluations by `absvit released` (MLflow store included), 2-core machine, 2026-12-03")}
DEFAULT_GPU_BENCH = Path("results") / "benchmarks" / "gpu.json"

# -- inputs ------------------------------------------------------------------------------------

def load_gpu_bench(path) -> dict:
    """The GPU benchmark's JSON, checked: ``{"card": str, "rows": [{"kind": "step"|"loop", "model", "batch",
    "img_size", "compiled", "img_s"}, {"kind": "segment", "model", "batch", "crop": [h, w], "step_s"}]}``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--gpu-bench {path}: no such file (the GPU benchmark writes it; leave the flag out to use "
                         "the stated default throughputs)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--gpu-bench {path}: not a JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise UsageError(f"--gpu-bench {path}: expected an object with `card` and a `rows` list")

    def number(row, key):
        return isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool) and row[key] > 0

    for i, row in enumerate(data["rows"]):
        kind = row.get("kind") if isinstance(row, dict) else None
        if kind not in ("step", "loop", "segment") or not isinstance(row.get("model"), str):
            raise UsageError(f"--gpu-bench {path}: rows[{i}]: expected a `kind` of step / loop / segment and a `model`, "
                             f"got {row!r}")
        if kind == "segment":
            crop = row.get("crop")
            ok = number(row, "step_s") and number(row, "batch") and isinstance(crop, list) and len(crop) == 2 \
                and all(isinstance(c, int) and c > 0 for c in crop)
            if not ok:
                raise UsageError(f"--gpu-bench {path}: rows[{i}] (segment, {row['model']}): expected step_s > 0, "
                                 f"batch and crop [h, w], got {row!r}")
        elif not number(row, "img_s"):
            raise UsageError(f"--gpu-bench {path}: rows[{i}] ({kind}, {row['model']}): expected img_s > 0, got {row!r}")
    data.setdefault("card", "unknown card")
    return data


def _count_images(folder: Path) -> int:
    return sum(f.lower().endswith((".jpeg", ".jpg", ".png")) for _, _, files in os.walk(folder) for f in files)


def dataset_sizes(preset_cfg: dict, *, count: bool = True, shards: int = 0) -> dict[str, tuple[int, str]]:
    """split -> (images, where the number comes from) for train and every suite; ``shards``: the
    ImageNet-C jobs of a generated preset's DAG."""
    data = preset_cfg["data"]
    if "generate" in data:
        from absvit.data.synthetic import classes_of

        per = data["generate"]["per_class"]
        out = {s: (per.get(k, 0) * len(classes_of(k)), f"generated: {per.get(k, 0)} per class (config)")
               for s, k in (("train", "train"), ("clean", "val"), ("imagenet-a", "imagenet-a"),
                            ("imagenet-r", "imagenet-r"), ("imagenet-sketch", "imagenet-sketch"))}
        c = min(data["make_imagenet_c"].get("per_class") or per["val"], per["val"])
        out["imagenet-c"] = (c * len(classes_of("val")) * shards, f"generated: {c} per class x {shards} shards")
        return _with_attacks(out)
    folders = {"train": Path(data["imagenet"]) / "train", "clean": Path(data["imagenet"]) / "val",
               **{s: Path(data[DATA_KEYS[s]]) for s in DATA_KEYS if s != "clean"}}
    out = {}
    for split, folder in folders.items():
        if count and folder.is_dir():
            out[split] = (_count_images(folder), f"counted in {folder}")
        else:
            why = "not counted" if folder.is_dir() else "folder absent"
            out[split] = (PUBLISHED[split], f"published size ({why}: {folder})")
    return _with_attacks(out)


def _with_attacks(sizes: dict) -> dict:
    """The attack suites' images: the clean val set's."""
    return {**sizes, **{s: (sizes["clean"][0], "the clean val images") for s in ATTACK_SUITES}}


# -- throughputs -------------------------------------------------------------------------------

def _kind(model: str) -> str:
    return "absvit" if model.startswith("absvit_") else "vit"


class Throughputs:
    """Per-GPU rates from the GPU benchmark's JSON, else the stated defaults."""

    def __init__(self, bench: dict | None = None, path=None):
        self.bench, self.where = bench, f"{path} ({bench['card']})" if bench else None

    def _rows(self, kind: str, model: str, img_size: int | None = None) -> list[dict]:
        rows = (self.bench or {}).get("rows", [])
        return [r for r in rows if r["kind"] == kind and r["model"] == model
                and (img_size is None or r.get("img_size", img_size) == img_size)]

    def _scaled(self, rate: float, img_size: int) -> tuple[float, str]:
        return (rate, "") if img_size == 224 else (rate * (224 / img_size) ** 2, f", x (224/{img_size})^2 pixels")

    def step(self, model: str, img_size: int) -> tuple[float, str]:
        """The bare training step's img/s on one GPU."""
        rows = self._rows("step", model, img_size)
        if rows:
            r = max(rows, key=lambda r: r["img_s"])
            return r["img_s"], f"{self.where}: step {model} batch {r.get('batch')}{' compiled' if r.get('compiled') else ''}"
        if model in DEFAULT_STEP:
            rate, scale = self._scaled(DEFAULT_STEP[model], img_size)
            return rate, f"default step {DEFAULT_STEP[model]} img/s ({H200}{scale})" + self._absent()
        patch16 = re.sub(r"_patch8_(\d+)(_gap)?$", r"_patch16_\1", model)
        if patch16 != model:  # a patch-8 model has 4x the tokens of its patch-16 twin
            rate, source = self.step(patch16, img_size)
            return rate / 4, f"{source} / 4 ({model}: 4x the tokens of {patch16}; attention's quadratic part not counted)"
        return math.nan, f"no measured step for {model}"

    def train(self, model: str, img_size: int) -> tuple[float, str]:
        """The real pretraining loop's img/s on one GPU."""
        rows = self._rows("loop", model, img_size)
        if rows:
            r = max(rows, key=lambda r: r["img_s"])
            return r["img_s"], f"{self.where}: loop {model} batch {r.get('batch')}{' compiled' if r.get('compiled') else ''}"
        if not self._rows("step", model, img_size) and model in DEFAULT_LOOP:
            rate, scale = self._scaled(DEFAULT_LOOP[model], img_size)
            return rate, f"default loop {DEFAULT_LOOP[model]} img/s ({H200}{scale})" + self._absent()
        step, source = self.step(model, img_size)
        share = LOOP_SHARE[_kind(model)]
        return step * share, f"{source} x {share:.2f} (the real loop's share of the step, measured at base size)"

    def segment(self, model: str, batch: int, crop: tuple[int, int]) -> tuple[float, str, str]:
        """Seconds per training step of UperNet on ``model`` on one GPU at this batch and crop, the source
        of the measurement, and how it was scaled to this batch and crop."""
        standin = ""
        if not self._rows("segment", model) and model not in DEFAULT_SEG_STEP:
            standin, model = f" ({model} not measured: {SEG_STANDIN}'s step stands in)", SEG_STANDIN
        rows = self._rows("segment", model)
        if rows:  # the measured crop closest in pixels
            r = min(rows, key=lambda r: abs(r["crop"][0] * r["crop"][1] - crop[0] * crop[1]))
            base, (b, h, w), src = r["step_s"], (r["batch"], *r["crop"]), f"{self.where}: segment {model}"
        else:
            base, (b, h, w) = DEFAULT_SEG_STEP[model], (16, 512, 512)
            src = f"default {model} {base * 1000:.0f} ms/step ({H200}, before the matmul upsampling)" + self._absent()
        scale = batch / b * crop[0] * crop[1] / (h * w)
        note = "" if scale == 1 else f" (x {scale:g}: batch {batch}/{b}, crop {crop[0]}x{crop[1]} / {h}x{w})"
        return base * scale, f"{src} at batch {b} {h}x{w}{standin}", note

    def _absent(self) -> str:
        return "; not in the GPU benchmark" if self.bench else ""


# -- one job's time, per rule ------------------------------------------------------------------

def gpus_of(request: dict | None) -> int:
    """The GPUs of one job of a SLURM request (None: a local stage, none)."""
    return int(request["gpus_per_node"]) * int(request.get("nodes", 1)) if request else 0


def cpus_of(request: dict | None) -> int:
    """The CPUs of one job of a SLURM request (None: a local stage, one)."""
    if not request:
        return 1
    return int(request["cpus_per_task"]) * max(int(request["gpus_per_node"]), 1) * int(request.get("nodes", 1))


@dataclass
class StageInputs:
    """What every rule's estimate reads: the preset's config, the SLURM request of each rule (by name, from
    ``presets.<preset>.resources``), the rates, the dataset sizes and a previous run's per-job times."""
    preset: str
    p: dict  # cfg["presets"][preset]
    rates: Throughputs
    sizes: dict[str, tuple[int, str]]  # dataset_sizes()
    results: Path | None
    previous: dict[str, tuple[float, int]]  # rule -> (mean s/job, benchmark files) of a previous run

    def request(self, rule: str) -> dict | None:
        return (self.p.get("resources") or {}).get(rule)

    @property
    def cpu_preset(self) -> bool:
        """No rule of the preset asks SLURM for a GPU."""
        return all(gpus_of(r) == 0 for r in (self.p.get("resources") or {}).values())

    def gpus(self, rule: str) -> int:
        return gpus_of(self.request(rule))

    def cpus(self, rule: str) -> int:
        return cpus_of(self.request(rule))


Estimate = tuple[list[float], str]  # (seconds of each job, source)
Jobs = list[dict[str, str]]  # the wildcards of each job of one rule


def estimate_stage(inp: StageInputs, rule: str, jobs: Jobs, notes: list[str]) -> Estimate:
    """The seconds of each job of ``rule``: a previous run's mean (CPU presets, and rules that never leave
    this machine), the reference run's fixed time, the rule's throughput model, else unknown (NaN)."""
    local = inp.cpu_preset or not inp.request(rule)  # its times on this machine are what a previous run measured
    if local and rule in inp.previous:
        mean, files = inp.previous[rule]
        return [mean] * len(jobs), f"previous run: mean {mean:.1f} s/job of {files} benchmark file(s) in {inp.results}"
    if rule in CPU_FIXED:
        seconds, where = CPU_FIXED[rule]
        return [seconds] * len(jobs), f"{seconds} s/job measured on the {where}"
    if rule in MODELS:
        return MODELS[rule](inp, jobs, notes)
    hint = " (a previous run's benchmark files give one)" if local else ""
    return [math.nan] * len(jobs), f"not estimated: no throughput model for this rule{hint}"


def _sources(formulas: dict, used: dict, jobs: Jobs) -> str:
    return "; ".join([*formulas, *used.values()]) + f"; {len(jobs)} job(s)"


def estimate_shards(inp: StageInputs, jobs: Jobs, notes: list[str]) -> Estimate:
    """One ImageNet-C (corruption, severity) shard per job, at a per-image rate."""
    per_shard = inp.sizes["imagenet-c"][0] / max(len(jobs), 1)
    return ([CPU_SHARD[0] + per_shard * CPU_SHARD[1]] * len(jobs),
            f"{CPU_SHARD[0]} s + {CPU_SHARD[1]} s/image ({CPU_REF}) x {per_shard:.0f} images/shard")


def estimate_pretrain(inp: StageInputs, jobs: Jobs, notes: list[str]) -> Estimate:
    """One job per run x seed; notes the runs whose GPUs would outpace the loader CPUs."""
    from absvit.recipe import PretrainRecipe

    p = inp.p
    secs, formulas, used, hungry = [], {}, {}, {}
    g, c = inp.gpus("pretrain"), inp.cpus("pretrain")
    n_train, n_val = inp.sizes["train"][0], inp.sizes["clean"][0]
    for job in jobs:
        spec = p["runs"][job["run"]]
        values = {**p.get("recipe", {}), **({"var_weight": spec["var_weight"]} if "var_weight" in spec else {})}
        recipe = PretrainRecipe.from_dict(values, where=f"presets.{inp.preset}.recipe")
        model = spec["model"]
        if g == 0:
            rate = CPU_PRETRAIN[_kind(model)]
            secs.append(recipe.epochs * n_train / rate)
            formulas[f"{recipe.epochs} epochs x {n_train:,} images / img/s of the job ({CPU_REF}, validation "
                     "included)"] = None
            used[model] = f"{model} {rate:g} img/s"
            continue
        rate, rsrc = inp.rates.train(model, recipe.img_size)
        step, _ = inp.rates.step(model, recipe.img_size)
        passes = 2 if recipe.model_ema else 1
        eval_rate = min(EVAL_SPEEDUP * step * g, DECODE_PER_CPU * c)
        secs.append(recipe.epochs * n_train / (rate * g) + recipe.epochs * passes * n_val / eval_rate)
        formulas[f"{recipe.epochs} epochs x {n_train:,} images / (loop img/s per GPU x {g} GPUs) + {recipe.epochs} x "
                 f"{passes} validation pass(es) x {n_val:,} images / min({EVAL_SPEEDUP:g} x step x {g}, {c} CPUs x "
                 f"{DECODE_PER_CPU:g}) img/s"] = None
        used[model] = f"{model} {rate:.0f} img/s per GPU [{rsrc}]"
        if rate * g / c > DECODE_PER_CPU:
            hungry[job["run"]] = f"{job['run']} {rate * g / c:.0f}"
    if hungry:
        notes.append(f"pretrain: the GPUs would take img/s per loader CPU ({c} per job) of {', '.join(hungry.values())}; "
                     f"the loader was measured only to >= {DECODE_PER_CPU:g} per worker (the H200 run), so these jobs "
                     "may be loader-bound (GPU-side augmentation, or more CPUs per task)")
    return secs, _sources(formulas, used, jobs)


def suite_work(suite: str) -> float:
    """One image of ``suite`` in forward passes: 1, or an attack's steps (a forward and backward pass each, about
    ``EVAL_SPEEDUP`` forward passes) plus the classification of the adversarial image."""
    from absvit.attacks import ATTACKS

    return ATTACKS[suite].steps * EVAL_SPEEDUP + 1 if suite in ATTACKS else 1.0


def estimate_evaluate(inp: StageInputs, jobs: Jobs, notes: list[str]) -> Estimate:
    """One job per run and seed evaluating every suite with one loaded model (FGSM / PGD: the clean images, attacked)."""
    secs, formulas, used = [], {}, {}
    g, c = inp.gpus("evaluate"), inp.cpus("evaluate")
    img_size = inp.p.get("evaluate", {}).get("img_size", 224)
    images = sum(inp.sizes[suite][0] for suite in SUITES)
    passes = sum(inp.sizes[suite][0] * suite_work(suite) for suite in SUITES)
    work = "the suites' forward passes (an attack step counts as 3, FGSM 4 per image, PGD 16)"
    for job in jobs:
        model = inp.p["runs"][job["run"]]["model"]
        if g == 0:
            secs.append(CPU_EVAL[0] + passes / CPU_EVAL[1])
            formulas[f"{CPU_EVAL[0]:g} s + {work} / {CPU_EVAL[1]:g} img/s ({CPU_REF})"] = None
            continue
        step, ssrc = inp.rates.step(model, img_size)
        gpu_rate, loader = EVAL_SPEEDUP * step * g, DECODE_PER_CPU * c
        secs.append(max(passes / gpu_rate, images / loader))
        formulas[f"max({work} / ({EVAL_SPEEDUP:g} x step img/s x {g} GPU), the images / ({c} CPUs x "
                 f"{DECODE_PER_CPU:g} img/s))"] = None
        used[model] = f"{model} [{ssrc}]: {'loader' if images / loader >= passes / gpu_rate else 'GPU'}-bound"
    sizes_src = ", ".join(f"{s} {n:,} ({src})" for s, (n, src) in inp.sizes.items())
    return secs, _sources(formulas, used, jobs) + f". Images: {sizes_src}"


def estimate_segment(inp: StageInputs, jobs: Jobs, notes: list[str]) -> Estimate:
    """One job per backbone x dataset x seed."""
    from absvit.recipe import SegmentRecipe

    seg = inp.p["segmentation"]
    secs, formulas, used, per_job = [], {}, {}, {}
    g = inp.gpus("segment")
    for job in jobs:
        name, dataset = job["backbone"], job["dataset"]
        r = SegmentRecipe.from_dict({**seg.get("recipe", {}), **seg["datasets"][dataset].get("recipe", {})},
                                    where=f"presets.{inp.preset}.segmentation.datasets.{dataset}.recipe")
        crop = (r.crop_height, r.crop_width)
        if g == 0:
            secs.append(CPU_SEGMENT[0] + r.iterations * CPU_SEGMENT[1] * r.batch_size * crop[0] * crop[1] / 64 ** 2)
            formulas[f"{CPU_SEGMENT[0]:g} s + iterations x batch x {CPU_SEGMENT[1]} s per 64x64 crop ({CPU_REF})"] = None
            continue
        step, ssrc, scaled = inp.rates.segment(seg["backbones"][name]["model"], r.batch_size, crop)
        secs.append(r.iterations * step / g)
        formulas[f"iterations x step s / {g} GPUs (whole-image evaluation not included: under 1% of training)"] = None
        used[ssrc] = ssrc
        per_job[f"{name}/{dataset} {r.iterations:,} x {step:.3f} s{scaled}"] = None
    return secs, _sources({**formulas, ", ".join(per_job): None} if per_job else formulas, used, jobs)


# V&L: the published sizes (VQAv2 train2014 / val2014 questions; Flickr30k's Karpathy split, 5 captions per image:
# 29,000 train, 1,014 val, 1,000 test images) and the stated assumption that METER's text encoder and fusion add half
# of the visual encoder's cost to each pair
VL_SIZES = {"vqa": {"train": 443_757, "val": 214_354},
            "retrieval": {"train": 145_000, "val": 5_070, "test_pairs": 1_000 * 5_000}}
VL_OVERHEAD = 1.5


def estimate_vl(inp: StageInputs, jobs: Jobs, notes: list[str]) -> Estimate:
    """One job per task x encoder x seed on the GPUs of its request: the training pairs x epochs at the encoder's
    bare-step rate / ``VL_OVERHEAD``, then the evaluation's forward passes at ``EVAL_SPEEDUP`` x that (retrieval: each
    caption with its negatives and an ITM pair; every test (image, text) pair scored). Each job's batch per update,
    as its GPUs x micro-batch x accumulated steps, and its optimiser updates are stated."""
    from absvit.vl.recipe import VLRecipe

    vl, g = inp.p["vl"], inp.gpus("vl")
    if g == 0:
        return [math.nan] * len(jobs), "not estimated: no throughput model for CPU V&L jobs (a previous run's gives one)"
    secs, used = [], {}
    for job in jobs:
        task, model = job["task"], vl["encoders"][job["encoder"]]["model"]
        r = VLRecipe.for_task(task, {**vl.get("recipe", {}), **vl.get(task, {})}, where=f"presets.{inp.preset}.vl.{task}")
        step, source = inp.rates.step(model, r.img_size)
        rate = step * g / VL_OVERHEAD
        sizes = VL_SIZES[task]
        if task == "vqa":
            samples, evaluated = sizes["train"] + (sizes["val"] if r.trainval else 0), sizes["val"]
            train = samples
        else:
            samples, evaluated = sizes["train"] + (sizes["val"] if r.trainval else 0), sizes["test_pairs"]
            train = samples * (r.negatives + 2)
        updates = r.epochs * (samples // r.batch_size)
        secs.append(r.epochs * train / rate + evaluated / (EVAL_SPEEDUP * rate))
        used[f"{task}/{model}"] = (f"{task} {model}: {r.epochs} x {train:,} pairs, batch {r.batch_size} per update "
                                   f"({g} GPUs x {r.micro_batch(g)} x {r.accum_steps} accumulated), {updates:,} updates, "
                                   f"{evaluated:,} evaluated [{source}]")
    return secs, (f"epochs x training pairs / (step img/s x GPUs / {VL_OVERHEAD:g}) + evaluated pairs / "
                  f"{EVAL_SPEEDUP:g} x that; published sizes; " + "; ".join(used.values()) + f"; {len(jobs)} job(s)")


# The rules with a throughput model; any other rule is estimated from a previous run, or not at all.
MODELS = {"imagenet_c": estimate_shards, "pretrain": estimate_pretrain, "evaluate": estimate_evaluate,
          "segment": estimate_segment, "vl": estimate_vl}
