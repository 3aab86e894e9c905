"""``absvit plan``: a preset's bill before anything is submitted.

The jobs are Snakemake's own: a dry run of the workflow beside the config (``snakemake all --dry-run
--forceall --config preset=<preset> plan_only=True``: the configured data need not exist yet) lists every job
with its rule and wildcards, and ``--rulegraph`` which rules wait for which. Per rule (a stage): its jobs, what
each asks SLURM for (``presets.<preset>.resources.<rule>``), and the expected wall time, GPU-hours and CPU
core-hours, each with its source (``absvit.estimates``: work / throughput from the GPU and loader benchmarks' JSON
or the stated defaults; a CPU preset's previous run or reference run), and whether the GPUs or the loader cores
bound it. A rule without a throughput model (one added later, say) is listed with its jobs and request, its time
``?``.
"""
from __future__ import annotations

import math
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from absvit.errors import UsageError, did_you_mean
from absvit.formats import hms, hours
from absvit.estimates import Estimate, estimate_stage
from absvit.throughput import (CPU_REF, DEFAULT_GPU_BENCH, DEFAULT_LOADER_BENCH, EVAL_SPEEDUP, LoaderRates,
                               StageInputs, Throughputs, cpus_of, dataset_sizes, load_gpu_bench, load_loader_bench)

TARGET = "all"  # the workflow's default target: the DAG planned; its own job does nothing and is not listed


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


# -- the jobs, from Snakemake ------------------------------------------------------------------

@dataclass
class Dag:
    """A preset's DAG as Snakemake plans it: rule -> the wildcards of each of its jobs, and rule -> the rules
    it waits for."""
    jobs: dict[str, list[dict[str, str]]]
    waits: dict[str, set[str]]


def parse_dry_run(text: str) -> dict[str, list[dict[str, str]]]:
    """rule -> each job's wildcards, from a dry run's job listing (``rule NAME:`` then an indented
    ``wildcards: k=v, ...`` line), checked against its ``Job stats`` table."""
    jobs: dict[str, list[dict[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if m := re.fullmatch(r"(?:local)?(?:rule|checkpoint) (\w+):", line):
            current = {}
            jobs.setdefault(m[1], []).append(current)
        elif current is not None and (m := re.fullmatch(r"\s+wildcards: (.*)", line)):
            current.update(item.split("=", 1) for item in re.split(r", (?=\w+=)", m[1]))
        elif not line.strip():
            current = None
    for js in jobs.values():  # the listing's order varies from run to run
        js.sort(key=lambda wc: [(k, (0, int(v), "") if v.isdigit() else (1, 0, v)) for k, v in sorted(wc.items())])
    stats = text.partition("Job stats:")[2].split("\n\n", 1)[0]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m[1] != "total"}
    listed = {rule: len(js) for rule, js in jobs.items()}
    if not counts or counts != listed:
        raise UsageError(f"could not read Snakemake's dry run: its job stats say {counts}, its job listing {listed}")
    return jobs


def parse_rulegraph(dot: str) -> dict[str, set[str]]:
    """rule -> the rules it waits for, from ``snakemake --rulegraph`` (dot: ``N[label = "rule"...]``, ``A -> B``)."""
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    waits: dict[str, set[str]] = {name: set() for name in names.values()}
    for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M):
        waits[names[b]].add(names[a])
    return waits


def workflow_dag(config, preset: str) -> Dag:
    """Ask Snakemake (this Python's) for ``preset``'s jobs: the workflow is the Snakefile beside ``config``,
    run in that folder in plan-only mode (see ``workflow/rules/common.smk``)."""
    config = Path(config).resolve()
    snakefile = config.parent / "Snakefile"
    if not snakefile.is_file():
        raise UsageError(f"--config {config}: no Snakefile beside it (absvit plan plans the workflow of the config's "
                         "folder)")
    cmd = [sys.executable, "-m", "snakemake", TARGET, "--snakefile", str(snakefile), "--directory", str(config.parent),
           "--configfile", str(config), "--workflow-profile", "none", "--nolock", "--forceall"]
    options = ("--config", f"preset={preset}", "plan_only=True")  # last: --config takes every word after it
    procs = [subprocess.Popen([*cmd, *extra, *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for extra in (["--dry-run"], ["--rulegraph"])]
    (dry, _), (dot, _) = (p.communicate() for p in procs)
    for p, out in zip(procs, (dry, dot)):
        if p.returncode:
            raise UsageError(f"Snakemake could not plan preset {preset!r} ({' '.join(p.args[1:])}):\n"
                             + "\n".join(out.strip().splitlines()[-15:]))
    return Dag(jobs=parse_dry_run(dry), waits=parse_rulegraph(dot))


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
    bound: str = ""  # "GPU", "loader", "GPU; loader: <parts>", "" where no GPU job is estimated


@dataclass
class Plan:
    preset: str
    label: str
    seeds: list
    gpu_bench: str | None
    loader_bench: str | None
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
                 "cpu_core_hours": _nansum(s.cpu_core_hours for s in self.stages), "bound": "",
                 "source": f"sum of the stages; critical path {hms(self.critical_path_s)} (each stage's jobs in parallel)"}
        return pd.DataFrame(rows + [total])

    def to_dict(self) -> dict:
        f = self.frame()
        clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
        rows = [{k: clean(v) for k, v in row.items()} for row in f.to_dict("records")]
        return {"preset": self.preset, "label": self.label, "seeds": self.seeds, "gpu_bench": self.gpu_bench,
                "loader_bench": self.loader_bench, "stages": rows[:-1], "total": rows[-1], "critical_path_s": self.critical_path_s,
                "assumptions": self.assumptions, "notes": self.notes}

    def to_text(self) -> str:
        f = self.frame()
        show = f.assign(**{"per job": [*f.job_s.iloc[:-1].map(hms), ""], "wall (sum)": f.wall_s.map(hms),
                           "GPU-h": f.gpu_hours.map(hours), "CPU core-h": f.cpu_core_hours.map(hours),
                           "request (per job)": f.request,
                           "bound by": [*f.bound.iloc[:-1].replace("", "-"), ""]})
        columns = ["stage", "jobs", "request (per job)", "per job", "wall (sum)", "GPU-h", "CPU core-h"]
        table = show[columns + (["bound by"] if f.bound.astype(bool).any() else [])]
        lines = [f"Plan for preset {self.preset!r}: {self.label}", f"seeds: {self.seeds}; GPU throughputs: "
                 + (self.gpu_bench or "stated defaults (no GPU benchmark JSON)") + "; loader: "
                 + (self.loader_bench or "stated defaults (no loader benchmark JSON)"), "",
                 table.to_string(index=False), "",
                 f"Critical path (every stage's jobs in parallel, unlimited nodes): {hms(self.critical_path_s)}; "
                 f"one job at a time: {hms(f.wall_s.iloc[-1])} (the DAG's wall time lies between the two).", "", "Sources:"]
        lines += [f"  {s.stage}: {s.source}" for s in self.stages]
        lines += ["", "Assumptions:"] + [f"  - {a}" for a in self.assumptions]
        if self.notes:
            lines += ["", "Notes:"] + [f"  - {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _nansum(values) -> float:
    values = list(values)
    return math.nan if values and all(math.isnan(v) for v in values) else sum(v for v in values if not math.isnan(v))


def _longest(secs: list[float]) -> float:
    known = [s for s in secs if not math.isnan(s)]
    return max(known) if known else math.nan


def _request(r: dict | None) -> str:
    if not r:
        return "local (no SLURM request)"
    gpus = f"{r.get('nodes', 1)} node x {r['gpus_per_node']} GPU" if r["gpus_per_node"] else f"{r.get('nodes', 1)} node, no GPU"
    return f"{gpus}, {r['cpus_per_task']} CPU/task, {r['mem_gb']:g} GB, {r['timeout_min']} min"


def _previous(results: Path | None) -> dict[str, tuple[float, int]]:
    """rule -> (mean seconds per job, files) of the benchmark files of a previous run
    (``benchmarks/<rule>/*.tsv`` or ``benchmarks/<rule>.tsv``)."""
    if results is None or not results.is_dir():
        return {}
    from absvit.cost import benchmark_jobs

    return {rule: (float(g.wall_s.mean()), len(g)) for rule, g in benchmark_jobs(results).groupby("stage")}


def stage_order(waits: dict[str, set[str]]) -> list[str]:
    """The rules in dependency order: by the longest chain of rules before each, then by name."""
    depth: dict[str, int] = {}

    def depth_of(rule: str) -> int:
        if rule not in depth:
            depth[rule] = 1 + max((depth_of(d) for d in waits.get(rule, ())), default=-1)
        return depth[rule]

    return sorted(waits, key=lambda rule: (depth_of(rule), rule))


def _stage(inp: StageInputs, rule: str, est: Estimate, notes: list[str]) -> Stage:
    """One row of the table; notes a job longer than its SLURM time limit."""
    secs = est.seconds
    g, r, longest = inp.gpus(rule), inp.request(rule), _longest(secs)
    wall = _nansum(secs)
    if "loader" in est.bound:
        notes.append(f"{rule}: loader-bound ({est.bound}): more loader cores per GPU (`resources.{rule}.cpus_per_task` "
                     "and the recipe's `workers`) shorten it; `make bench` on the cluster's nodes measures their cores")
    if r and not math.isnan(longest) and longest > r["timeout_min"] * 60:
        notes.append(f"{rule}: the longest job (~{hms(longest)}) exceeds its {r['timeout_min']} min limit: "
                     f"it resumes from its checkpoint after ~{int(longest // (r['timeout_min'] * 60))} requeue(s)")
    return Stage(stage=rule, jobs=len(secs), request=_request(r), gpus_per_job=g, job_s=longest, wall_s=wall,
                 gpu_hours=wall * g / 3600, cpu_core_hours=wall * cpus_of(r) / 3600, source=est.source,
                 bound=est.bound)


def _critical_path(stages: list[Stage], waits: dict[str, set[str]]) -> float:
    """Every stage's jobs run in parallel; a stage starts when the stages it waits for end (``stages`` is in
    dependency order)."""
    finish: dict[str, float] = {}
    for s in stages:
        own = 0.0 if math.isnan(s.job_s) else s.job_s
        finish[s.stage] = max((finish.get(d, 0.0) for d in waits.get(s.stage, ())), default=0.0) + own
    return max(finish.values(), default=0.0)


def _assumptions(cpu_preset: bool) -> list[str]:
    if cpu_preset:
        return [
            "CPU preset: no GPUs requested, so 0 GPU-hours; times are per job on the machine that ran the reference "
            f"({CPU_REF}) or previous run, CPU core-hours = wall x the CPUs the stage requests",
            "the critical path assumes every stage's jobs run side by side (on 2 cores they queue: see `one job at a time`)",
        ]
    return [
        "GPU rates scale linearly with the GPUs of a job (data parallel, same per-GPU batch efficiency)",
        f"inference runs at {EVAL_SPEEDUP:g}x the bare training step",
        "a job runs at the slower of its GPUs and its loader: the loader cores (the recipe's workers per GPU process, "
        "at most the CPUs requested) x the img/s per core of the transform the stage runs; loader benchmarks measure "
        "one core per worker, so a node with fewer physical cores than workers is slower; a stage's bound names the "
        "parts (jobs, suites) the loader bounds in at least one job",
        "sizes of Cityscapes crops (512x1024) and batch scale the segmentation step linearly in pixels",
        "queue waits, job start-up and checkpoint writes are not included; each stage's jobs are assumed to run "
        "side by side for the critical path",
    ]


def make_plan(config, preset: str | None = None, *, dag: Dag | None = None, gpu_bench=None, loader_bench=None,
              results=None, count_files: bool = True) -> Plan:
    """The plan of ``preset`` (default: the config's ``preset``) of the workflow beside ``config`` (the path of
    its config.yaml). ``dag``: its jobs (default: ``workflow_dag``, asked of Snakemake now); ``gpu_bench``: the
    GPU benchmark's JSON path (None: the stated defaults); ``loader_bench``: the loader benchmark's (None: the
    stated defaults); ``results``: ``results/<preset>/benchmarks`` of a
    previous run (CPU presets and local stages use its per-job times when present); ``count_files``: count the
    images of the configured dataset folders (False: published sizes)."""
    cfg = load_config(config)
    preset = preset or cfg.get("preset")
    if preset not in cfg["presets"]:
        raise UsageError(f"--preset {preset!r}: no such preset{did_you_mean(str(preset), cfg['presets'])}; "
                         f"the config has {sorted(cfg['presets'])}")
    p = cfg["presets"][preset]
    rates = Throughputs(load_gpu_bench(gpu_bench), gpu_bench) if gpu_bench else Throughputs()
    loader = LoaderRates(load_loader_bench(loader_bench), loader_bench) if loader_bench else LoaderRates()
    dag = dag or workflow_dag(config, preset)
    results = Path(results) if results else None
    inp = StageInputs(preset=preset, p=p, rates=rates, loader=loader, results=results, previous=_previous(results),
                      sizes=dataset_sizes(p, count=count_files, shards=len(dag.jobs.get("imagenet_c", ()))))
    notes: list[str] = []
    stages = []
    for rule in stage_order({r: dag.waits.get(r, set()) for r in dag.jobs if r != TARGET}):
        stages.append(_stage(inp, rule, estimate_stage(inp, rule, dag.jobs[rule], notes), notes))
    if any(math.isnan(s.job_s) for s in stages):
        notes.append("stages marked ? have no throughput model or previous run: the totals and the critical path "
                     "leave them out")
    return Plan(preset=preset, label=p.get("label", ""), seeds=list(p.get("seeds", [0])),
                gpu_bench=str(gpu_bench) if gpu_bench else None,
                loader_bench=str(loader_bench) if loader_bench else None, stages=stages,
                critical_path_s=_critical_path(stages, dag.waits), assumptions=_assumptions(inp.cpu_preset), notes=notes)


# -- CLI ---------------------------------------------------------------------------------------

def add_arguments(p) -> None:
    p.add_argument("--config", default="config.yaml",
                   help="the pipeline's config; the Snakefile beside it is planned (default: %(default)s)")
    p.add_argument("--preset", default=None, help="which preset (default: the config's `preset`)")
    p.add_argument("--gpu-bench", default=None, metavar="JSON",
                   help=f"the GPU benchmark's JSON (default: {DEFAULT_GPU_BENCH} beside the config if it exists, "
                        "else the defaults measured on one NVIDIA H200, stated in the output)")
    p.add_argument("--loader-bench", default=None, metavar="JSON",
                   help=f"the loader benchmark's JSON (`make bench`; default: {DEFAULT_LOADER_BENCH} beside the config if "
                        "it exists, else the per-core rates measured on a 2-core Debian machine, stated in the output)")
    p.add_argument("--published-sizes", action="store_true",
                   help="use the datasets' published sizes instead of counting the files in the configured folders")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the plan as JSON")


def main(args) -> None:
    from absvit.io import write_json

    root = Path(args.config).resolve().parent
    gpu_bench, loader_bench = args.gpu_bench, args.loader_bench
    if gpu_bench is None and (root / DEFAULT_GPU_BENCH).is_file():
        gpu_bench = root / DEFAULT_GPU_BENCH
    if loader_bench is None and (root / DEFAULT_LOADER_BENCH).is_file():
        loader_bench = root / DEFAULT_LOADER_BENCH
    preset = args.preset or load_config(args.config).get("preset")
    plan = make_plan(args.config, preset, gpu_bench=gpu_bench, loader_bench=loader_bench, results=root / "results" / str(preset) / "benchmarks",
                     count_files=not args.published_sizes)
    print(plan.to_text(), end="")
    if args.json:
        write_json(args.json, plan.to_dict())
