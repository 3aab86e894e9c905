"""Throughputs and dataset sizes behind ``absvit plan``'s expected times, each with where it comes from.

- GPU rates: the GPU benchmark's JSON when given (``make bench-gpu``, read by ``load_gpu_bench`` and
  ``Throughputs``), else the defaults measured on one NVIDIA H200 with the code of 2026-11-27, before that
  benchmark existed (``DEFAULT_STEP``, ``DEFAULT_LOOP``, ``DEFAULT_SEG_STEP``), and one stated factor
  (``EVAL_SPEEDUP``, an assumption).
- Loader rates: img/s per CPU core of each transform the stages run, from the loader benchmark's JSON
  (``make bench``: benchmarks/loader.py, read by ``load_loader_bench`` and ``LoaderRates``), else the same
  benchmark's rates measured here (``DEFAULT_LOADER``).
- CPU presets: per-job times of a run of the embedded DAG on a 2-core machine (``CPU_*``).
- Dataset sizes: counted in the configured folders when they exist, else the published sizes
  (``PUBLISHED``); a generated preset's sizes follow from its config (``dataset_sizes``).

``absvit.estimates`` turns these into the seconds of each job of one rule of the workflow.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from absvit.data import ATTACK_SUITES
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
# Loader: img/s per core of each stage's transform (benchmarks/loader.py's rows; see its docstring), measured with
# `python benchmarks/loader.py` on one quiet core of this project's 2-core Debian 12 machine (PIL, torchvision 0.29).
LOADER_REF = "benchmarks/loader.py on one quiet core of a 2-core Debian 12 machine, 2026-12-05"
DEFAULT_LOADER = {"pretrain": 330.0, "eval": 331.0, "imagenet_c": 2678.0, "vl": 141.0, "segment": 49.0}
LOADER_OF_SUITE = {"imagenet-c": "imagenet_c"}  # every other suite (attacks too) reads ImageNet-size JPEGs: "eval"
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
    "released": (4.1, "embedded run's 3 evaluations by `absvit released` (MLflow store included), 2-core machine, 2026-12-03")}
# s per job of the stages whose work grows with the preset's sizes: CPU presets only (the embedded sizes)
CPU_REF_EMBEDDED = "embedded DAG run on a 2-core machine, 2026-12-05 (GAP runs of 5 epochs, 96 V&L train scenes)"
CPU_EMBEDDED = {rule: (s, CPU_REF_EMBEDDED) for rule, s in (("scenes", 0.3), ("vl_data", 14.7), ("vl", 24.9),
                                                            ("vl_figure", 13.2), ("decoder", 5.1), ("figures", 11.3))}
DEFAULT_GPU_BENCH = Path("results") / "benchmarks" / "gpu.json"
DEFAULT_LOADER_BENCH = Path("results") / "benchmarks" / "loader.json"

# -- inputs ------------------------------------------------------------------------------------

def load_gpu_bench(path) -> dict:
    """The GPU benchmark's JSON, checked: ``{"card": str, "rows": [{"kind": "step"|"loop", "model", "batch",
    "img_size", "compiled", "img_s"}, {"kind": "segment", "model", "batch", "crop": [h, w], "step_s"}]}``."""
    path = Path(path)
    data = _read_json(path, "--gpu-bench", "the GPU benchmark (`make bench-gpu`)")
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


def _read_json(path: Path, flag: str, writer: str):
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file ({writer} writes it; leave the flag out to use the stated "
                         "defaults)")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{flag} {path}: not a JSON file ({e})") from None


def load_loader_bench(path) -> dict:
    """The loader benchmark's JSON, checked: ``{"machine": str, "measured_at": str, "rows": [{"transform": str,
    "img_s_per_core": float}]}``."""
    path = Path(path)
    data = _read_json(path, "--loader-bench", "`make bench` (benchmarks/loader.py)")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise UsageError(f"--loader-bench {path}: expected an object with `machine` and a `rows` list")
    for i, row in enumerate(data["rows"]):
        rate = row.get("img_s_per_core") if isinstance(row, dict) else None
        if not isinstance(row, dict) or not isinstance(row.get("transform"), str) \
                or not isinstance(rate, (int, float)) or isinstance(rate, bool) or rate <= 0:
            raise UsageError(f"--loader-bench {path}: rows[{i}]: expected a `transform` name and img_s_per_core > 0, "
                             f"got {row!r}")
    data.setdefault("machine", "unknown machine")
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


class LoaderRates:
    """Per-core img/s of the stages' transforms from the loader benchmark's JSON, else the stated defaults."""

    def __init__(self, bench: dict | None = None, path=None):
        self.bench, self.where = bench, f"{path} ({bench['machine']}, {bench.get('measured_at', 'undated')})" \
            if bench else None

    def per_core(self, transform: str) -> tuple[float, str]:
        rows = [r for r in (self.bench or {}).get("rows", []) if r["transform"] == transform]
        if rows:
            return rows[-1]["img_s_per_core"], f"{self.where}: {transform}"
        absent = "; not in the loader benchmark" if self.bench else ""
        return DEFAULT_LOADER[transform], f"default {transform} {DEFAULT_LOADER[transform]:g} img/s/core ({LOADER_REF}){absent}"

    def suite(self, suite: str) -> tuple[float, str]:
        """The per-core rate of the transform that evaluating ``suite`` runs."""
        return self.per_core(LOADER_OF_SUITE.get(suite, "eval"))


# -- what every estimate reads ------------------------------------------------------------------

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
    loader: LoaderRates
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
