"""``absvit plan``: a preset's bill before anything is submitted.

Per stage: the number of jobs (mirroring the DAG's), what each job asks SLURM for
(``presets.<preset>.resources``), and the expected wall time, GPU-hours and CPU core-hours, each with
the source of the number in a ``source`` column. Expected times are work / throughput:

- pretraining: epochs x ImageNet train images / (the training loop's img/s per GPU x GPUs), plus each
  epoch's validation (model and EMA) at the evaluation rate;
- evaluation: suite images / min(3 x the bare training step's img/s, loader CPUs x 150 img/s);
- segmentation: iterations x step time (batch 16, 512x512 on one GPU; scaled by batch and crop
  pixels) / GPUs.

Throughputs come from the GPU benchmark's JSON when present, else from the H200 measurements quoted
in issue 10 (``DEFAULT_*`` in ``absvit.throughput``, which says where each number comes from). Dataset
sizes are counted in the configured folders when they exist, else the published sizes are used; either
way the source says which. Scaling over GPUs is assumed linear. A CPU preset (the embedded default, no
GPUs requested) has 0 GPU-hours; its times come from the benchmark files of a previous run of the same
preset when there are any, else from a measured reference run of the embedded DAG on a 2-core machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from absvit.errors import UsageError, did_you_mean
from absvit.throughput import (DECODE_PER_CPU, DEFAULT_GPU_BENCH, EVAL_SPEEDUP, IMAGENET_C_SHARDS, Estimate,
                               StageInputs, Throughputs, dataset_sizes, estimate_evaluate, estimate_local,
                               estimate_pretrain, estimate_segment, gpus_of, load_gpu_bench)

STAGES = ("embedded_dataset", "imagenet_c_shard", "pretrain", "evaluate", "lvar_ablation", "robustness_comparison",
          "segmentation_dataset", "segment", "scenes", "decoder", "figures", "tables")
SLURM_STAGES = {"imagenet_c_shard": "imagenet_c", "pretrain": "pretrain", "evaluate": "evaluate", "segment": "segment"}
BENCH_NAMES = {"imagenet_c_shard": ("imagenet_c_shard", "imagenet_c")}  # benchmarks/<name>/ of a stage
EDGES = {  # stage -> the stages it waits for (for the critical path)
    "imagenet_c_shard": ("embedded_dataset",), "pretrain": ("embedded_dataset",),
    "evaluate": ("embedded_dataset", "imagenet_c_shard", "pretrain"), "lvar_ablation": ("evaluate",),
    "robustness_comparison": ("evaluate",), "segment": ("segmentation_dataset", "pretrain"),
    "decoder": ("pretrain",), "figures": ("scenes", "decoder"),
    "tables": ("lvar_ablation", "robustness_comparison", "segment", "figures"),
}


def seeds_of(preset_cfg: dict) -> list:
    return list(preset_cfg.get("seeds", [0]))


def jobs_per_stage(preset_cfg: dict) -> dict[str, int]:
    """The DAG's jobs per stage for one preset's config (``STAGES`` order; `all` not counted).

    Pretraining runs (``runs`` not in ``checkpoints``) run once per seed; evaluation is run x seed, all five
    suites in one job (a released checkpoint: once); segmentation backbone x dataset x seed; ImageNet-C shards
    (15 corruptions x 5 severities) only for a generated preset; generated scenes once, decoder and figures
    per seed;
    the comparisons and tables once."""
    seeds = len(seeds_of(preset_cfg))
    runs, released = preset_cfg["runs"], preset_cfg.get("checkpoints") or {}
    trained = [r for r in runs if r not in released]
    seg = preset_cfg["segmentation"]
    generated = "generate" in preset_cfg["data"]
    return {"embedded_dataset": int(generated), "imagenet_c_shard": IMAGENET_C_SHARDS if generated else 0,
            "pretrain": len(trained) * seeds, "evaluate": len(trained) * seeds + len(runs) - len(trained),
            "lvar_ablation": 1, "robustness_comparison": 1, "segmentation_dataset": int("generate" in seg),
            "segment": len(seg["backbones"]) * len(seg["datasets"]) * seeds,
            **_figure_jobs(preset_cfg, seeds), "tables": 1}


def _figure_jobs(preset_cfg: dict, seeds: int) -> dict[str, int]:
    """figures.smk: generated scenes once; the decoder and the figures per seed of the AbSViT run (one for a
    released file); none without a `figures:` key."""
    fig = preset_cfg.get("figures")
    if not fig:
        return {"scenes": 0, "decoder": 0, "figures": 0}
    per_seed = 1 if fig["absvit_run"] in (preset_cfg.get("checkpoints") or {}) else seeds
    return {"scenes": int(isinstance(fig["scenes"], dict)), "decoder": per_seed, "figures": per_seed}


# -- inputs ------------------------------------------------------------------------------------

def load_config(path) -> dict:
    import yaml

    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"--config {path}: cannot read it ({e})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("presets"), dict):
        raise UsageError(f"--config {path}: expected a config.yaml with a `presets` mapping")
    return cfg



# -- the plan ----------------------------------------------------------------------------------

@dataclass
class Stage:
    stage: str
    jobs: int
    request: str
    gpus_per_job: int
    job_s: float  # the longest job
    wall_s: float  # the jobs' wall times summed
    gpu_hours: float
    cpu_core_hours: float
    source: str


@dataclass
class Plan:
    preset: str
    label: str
    seeds: list
    gpu_bench: str | None
    stages: list[Stage]
    critical_path_s: float
    assumptions: list[str]
    notes: list[str] = field(default_factory=list)

    def frame(self):
        import pandas as pd

        rows = [vars(s) for s in self.stages]
        total = {"stage": "total", "jobs": sum(s.jobs for s in self.stages), "request": "", "gpus_per_job": math.nan,
                 "job_s": math.nan, "wall_s": _nansum(s.wall_s for s in self.stages),
                 "gpu_hours": _nansum(s.gpu_hours for s in self.stages),
                 "cpu_core_hours": _nansum(s.cpu_core_hours for s in self.stages),
                 "source": f"sum of the stages; critical path {_hms(self.critical_path_s)} (each stage's jobs in parallel)"}
        return pd.DataFrame(rows + [total])

    def to_dict(self) -> dict:
        f = self.frame()
        clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
        rows = [{k: clean(v) for k, v in row.items()} for row in f.to_dict("records")]
        return {"preset": self.preset, "label": self.label, "seeds": self.seeds, "gpu_bench": self.gpu_bench,
                "stages": rows[:-1], "total": rows[-1], "critical_path_s": self.critical_path_s,
                "assumptions": self.assumptions, "notes": self.notes}

    def to_text(self) -> str:
        f = self.frame()
        show = f.assign(**{"per job": [*f.job_s.iloc[:-1].map(_hms), ""], "wall (sum)": f.wall_s.map(_hms),
                           "GPU-h": f.gpu_hours.map(_num), "CPU core-h": f.cpu_core_hours.map(_num),
                           "request (per job)": f.request})
        table = show[["stage", "jobs", "request (per job)", "per job", "wall (sum)", "GPU-h", "CPU core-h"]]
        lines = [f"Plan for preset {self.preset!r}: {self.label}", f"seeds: {self.seeds}; throughputs: "
                 + (self.gpu_bench or "stated defaults (no GPU benchmark JSON)"), "",
                 table.to_string(index=False), "",
                 f"Critical path (every stage's jobs in parallel, unlimited nodes): {_hms(self.critical_path_s)}; "
                 f"one job at a time: {_hms(f.wall_s.iloc[-1])} (the DAG's wall time lies between the two).", "", "Sources:"]
        lines += [f"  {s.stage}: {s.source}" for s in self.stages if s.jobs]
        lines += ["", "Assumptions:"] + [f"  - {a}" for a in self.assumptions]
        if self.notes:
            lines += ["", "Notes:"] + [f"  - {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _nansum(values) -> float:
    values = list(values)
    return math.nan if values and all(math.isnan(v) for v in values) else sum(v for v in values if not math.isnan(v))


def _hms(seconds: float) -> str:
    if seconds is None or math.isnan(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _num(v: float) -> str:
    return "?" if math.isnan(v) else ("0" if v == 0 else f"{v:.2f}" if v >= 0.005 else "<0.01")


def _request(r: dict | None) -> str:
    if not r:
        return "local (no SLURM request)"
    gpus = f"{r.get('nodes', 1)} node x {r['gpus_per_node']} GPU" if r["gpus_per_node"] else f"{r.get('nodes', 1)} node, no GPU"
    return f"{gpus}, {r['cpus_per_task']} CPU/task, {r['mem_gb']:g} GB, {r['timeout_min']} min"


def _previous(results: Path | None) -> dict[str, tuple[float, int]]:
    """stage -> (mean seconds per job, files) of the benchmark files of a previous run."""
    if results is None or not results.is_dir():
        return {}
    from absvit.cost import benchmark_jobs

    jobs = benchmark_jobs(results)
    found = {name: (float(g.wall_s.mean()), len(g)) for name, g in jobs.groupby("stage")}
    return {stage: found[name] for stage in STAGES for name in BENCH_NAMES.get(stage, (stage,)) if name in found}


# -- assembling the plan ----------------------------------------------------------------------

def _stages(inp: StageInputs, jobs: dict[str, int], estimates: dict[str, Estimate], notes: list[str]) -> list[Stage]:
    """The table's rows in ``STAGES`` order; notes the jobs longer than their SLURM time limit."""
    stages = []
    for stage in STAGES:
        secs, source = estimates[stage]
        assert len(secs) == jobs[stage], (stage, len(secs), jobs[stage])  # the estimates follow jobs_per_stage
        g = inp.gpus(stage)
        wall = _nansum(secs) if secs else 0.0
        stages.append(Stage(stage=stage, jobs=jobs[stage], request=_request(inp.requests[stage]) if jobs[stage] else "",
                            gpus_per_job=g, job_s=max(secs, key=lambda v: -1 if math.isnan(v) else v) if secs else 0.0,
                            wall_s=wall, gpu_hours=wall * g / 3600, cpu_core_hours=wall * inp.cpus(stage) / 3600,
                            source=source if jobs[stage] else "no jobs"))
        r = inp.requests[stage]
        if r and secs and not math.isnan(max(secs)) and max(secs) > r["timeout_min"] * 60:
            notes.append(f"{stage}: the longest job (~{_hms(max(secs))}) exceeds its {r['timeout_min']} min limit: "
                         f"it resumes from its checkpoint after ~{int(max(secs) // (r['timeout_min'] * 60))} requeue(s)")
    if any(math.isnan(s.wall_s) or (s.jobs and math.isnan(s.job_s)) for s in stages):
        notes.append("stages marked ? have no measured throughput: the totals leave them out")
    return stages


def _critical_path(stages: list[Stage], seg: dict) -> float:
    """Every stage's jobs run in parallel; a stage starts when the stages it waits for end."""
    seg_waits = any(b.get("run") for b in seg["backbones"].values())
    finish: dict[str, float] = {}
    for s in stages:  # STAGES is in dependency order
        deps = [d for d in EDGES.get(s.stage, ()) if not (s.stage == "segment" and d == "pretrain" and not seg_waits)]
        own = 0.0 if not s.jobs or math.isnan(s.job_s) else s.job_s
        finish[s.stage] = max((finish[d] for d in deps), default=0.0) + own
    return max(finish.values(), default=0.0)


def _assumptions(cpu_preset: bool) -> list[str]:
    if cpu_preset:
        return [
            "CPU preset: no GPUs requested, so 0 GPU-hours; times are per job on the machine that ran the reference "
            "(or previous) run, CPU core-hours = wall x the CPUs the stage requests",
            "the critical path assumes every stage's jobs run side by side (on 2 cores they queue: see `one job at a time`)",
        ]
    return [
        "GPU rates scale linearly with the GPUs of a job (data parallel, same per-GPU batch efficiency)",
        f"inference runs at {EVAL_SPEEDUP:g}x the bare training step, capped by the loader at {DECODE_PER_CPU:g} img/s "
        "per CPU (issue 10: the real loop's loader delivered >= 2,093 img/s from 14 workers)",
        "sizes of Cityscapes crops (512x1024) and batch scale the segmentation step linearly in pixels",
        "queue waits, job start-up and checkpoint writes are not included; each stage's jobs are assumed to run "
        "side by side for the critical path",
    ]


def make_plan(cfg: dict, preset: str | None = None, *, gpu_bench=None, results=None, count_files: bool = True) -> Plan:
    """The plan of ``preset`` (default: ``cfg["preset"]``). ``gpu_bench``: the GPU benchmark's JSON path
    (None: the stated defaults); ``results``: ``results/<preset>/benchmarks`` of a previous run (CPU
    presets and local stages use its per-job times when present); ``count_files``: count the images of
    the configured dataset folders (False: published sizes)."""
    preset = preset or cfg.get("preset")
    if preset not in cfg["presets"]:
        raise UsageError(f"--preset {preset!r}: no such preset{did_you_mean(str(preset), cfg['presets'])}; "
                         f"the config has {sorted(cfg['presets'])}")
    p = cfg["presets"][preset]
    rates = Throughputs(load_gpu_bench(gpu_bench), gpu_bench) if gpu_bench else Throughputs()
    results = Path(results) if results else None
    jobs = jobs_per_stage(p)
    sizes = dataset_sizes(p, count=count_files)
    previous = _previous(results)
    resources = p.get("resources") or {}
    requests = {stage: resources.get(SLURM_STAGES.get(stage, stage)) for stage in STAGES}
    inp = StageInputs(preset=preset, p=p, requests=requests, rates=rates, sizes=sizes, seeds=seeds_of(p),
                      results=results, previous=previous,
                      cpu_preset=all(gpus_of(requests[s]) == 0 for s in SLURM_STAGES))
    notes: list[str] = []
    estimates = estimate_local(inp, jobs)
    estimates["pretrain"] = estimate_pretrain(inp, notes)
    estimates["evaluate"] = estimate_evaluate(inp)
    estimates["segment"] = estimate_segment(inp)
    stages = _stages(inp, jobs, estimates, notes)
    return Plan(preset=preset, label=p.get("label", ""), seeds=inp.seeds, gpu_bench=str(gpu_bench) if gpu_bench else None,
                stages=stages, critical_path_s=_critical_path(stages, p["segmentation"]),
                assumptions=_assumptions(inp.cpu_preset), notes=notes)


# -- CLI ---------------------------------------------------------------------------------------

def add_arguments(p) -> None:
    p.add_argument("--config", default="config.yaml", help="the pipeline's config (default: %(default)s)")
    p.add_argument("--preset", default=None, help="which preset (default: the config's `preset`)")
    p.add_argument("--gpu-bench", default=None, metavar="JSON",
                   help=f"the GPU benchmark's JSON (default: {DEFAULT_GPU_BENCH} beside the config if it exists, "
                        "else the H200 numbers of issue 10)")
    p.add_argument("--published-sizes", action="store_true",
                   help="use the datasets' published sizes instead of counting the files in the configured folders")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the plan as JSON")


def main(args) -> None:
    from absvit.io import write_json

    cfg = load_config(args.config)
    root = Path(args.config).resolve().parent
    gpu_bench = args.gpu_bench
    if gpu_bench is None and (root / DEFAULT_GPU_BENCH).is_file():
        gpu_bench = root / DEFAULT_GPU_BENCH
    preset = args.preset or cfg.get("preset")
    plan = make_plan(cfg, preset, gpu_bench=gpu_bench, results=root / "results" / str(preset) / "benchmarks",
                     count_files=not args.published_sizes)
    print(plan.to_text(), end="")
    if args.json:
        write_json(args.json, plan.to_dict())
