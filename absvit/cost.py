"""What a pipeline run cost, per stage and in total: jobs, wall time, CPU core-hours, GPU-hours.

Sources, per stage:

- Snakemake's ``benchmark:`` files (``results/<preset>/benchmarks/<stage>/<job>.tsv``, or
  ``benchmarks/<rule>.tsv`` for a one-job stage): wall time is the file's ``s``, CPU core-hours its
  ``cpu_time`` (user + system seconds of the job's whole process tree, children included, so a
  submitit local job counts), GPU-hours wall x the GPUs the stage requests (``gpus``: submitit's local
  executor gives the job that many). This is every stage's source with the local launcher, and the source of
  the stages that never leave the Snakemake machine (comparisons, tables) with SLURM.
- ``sacct`` for the jobs submitit sent to SLURM (``results/<preset>/submitit/<stage>/<name>/<jobid>/``):
  wall time is the allocation's elapsed time (every requeued run of it, ``sacct -D``), CPU core-hours
  elapsed x allocated CPUs, GPU-hours elapsed x allocated GPUs (``gres/gpu=N`` in AllocTRES). Every job
  id in the folders counts: a failed attempt that Snakemake reran was paid for too.

The wall time of a stage is the sum of its jobs' wall times, not the time the DAG took: jobs overlap,
and the critical path is not computed. Snakemake samples CPU time (every second for the first 30 s,
then every 30 s), so a benchmark file's ``cpu_time`` misses what ran after the last sample.
"""
from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pandas as pd

from absvit.errors import UsageError
from absvit.formats import hms, hours, markdown_table, tex_escape
from absvit.io import atomic_path

COLUMNS = ["stage", "jobs", "wall_s", "cpu_core_hours", "gpu_hours", "source", "note"]
# The DAG's stages in pipeline order (the cost table's row order; any other stage follows, sorted).
STAGE_ORDER = ("embedded_dataset", "imagenet_c", "pretrain", "evaluate", "lvar_ablation", "robustness_comparison",
               "segmentation_dataset", "segment", "scenes", "decoder", "figures", "tables")
SACCT_FIELDS = ("JobID", "JobName", "Elapsed", "ElapsedRaw", "AllocCPUS", "AllocTRES", "State")
NOTE = ("Wall time is the sum of the jobs' own wall times, not the time the DAG took (jobs overlap; the critical "
        "path is not computed).")


def _stage_of(path: Path, root: Path) -> str:
    """The stage of a benchmark file or submitit job folder: the first path component below ``root``
    (a file directly under it is its own stage, named by its stem)."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else path.stem


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def benchmark_jobs(bench_dir) -> pd.DataFrame:
    """One row per Snakemake benchmark file under ``bench_dir``: stage, file, wall_s, cpu_s (None where
    Snakemake collected no CPU sample: a job shorter than its first sample, or "NA")."""
    bench_dir = Path(bench_dir)
    rows = []
    for path in sorted(bench_dir.rglob("*.tsv")):
        try:
            frame = pd.read_csv(path, sep="\t")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise UsageError(f"{path}: not a Snakemake benchmark file ({e})") from None
        if "s" not in frame.columns or frame.empty:
            raise UsageError(f"{path}: not a Snakemake benchmark file (expected a header with s, h:m:s, ..., "
                             f"cpu_time and one row per run; got columns {list(frame.columns)})")
        cpu = [_number(v) for v in frame.get("cpu_time", [None] * len(frame))]
        rows.append({"stage": _stage_of(path, bench_dir), "file": str(path),
                     "wall_s": float(sum(_number(v) or 0.0 for v in frame["s"])),  # several rows: repeat()
                     "cpu_s": None if all(c is None for c in cpu) else float(sum(c or 0.0 for c in cpu))})
    return pd.DataFrame(rows, columns=["stage", "file", "wall_s", "cpu_s"])


def submitit_jobs(submitit_dir) -> dict[str, list[str]]:
    """stage -> the SLURM job ids submitit made under ``submitit_dir/<stage>/<name>/<jobid>/``: the folders
    holding ``<jobid>_submission.sh`` (the local launcher's folders, named by process id, hold none)."""
    submitit_dir = Path(submitit_dir)
    jobs: dict[str, list[str]] = {}
    if submitit_dir.is_dir():
        for folder in sorted(submitit_dir.glob("*/*/*")):
            if re.fullmatch(r"\d+(_\d+)?", folder.name) and (folder / f"{folder.name}_submission.sh").exists():
                jobs.setdefault(_stage_of(folder, submitit_dir), []).append(folder.name)
    return jobs


def allocated_gpus(tres: str) -> int:
    """Allocated GPUs in an AllocTRES string (``cpu=8,gres/gpu=2,mem=32G,node=1``; typed
    ``gres/gpu:h100=2`` entries are summed only where the untyped total is absent)."""
    total = re.search(r"(?:^|,)gres/gpu=(\d+)", tres)
    if total:
        return int(total[1])
    return sum(int(n) for n in re.findall(r"(?:^|,)gres/gpu:[^=,]+=(\d+)", tres))


def sacct(job_ids, *, chunk: int = 200) -> pd.DataFrame:
    """One row per allocation record of ``job_ids`` (``sacct -X -D``: a requeued job has one per run):
    job_id, name, elapsed_s, cpus, gpus, state."""
    rows = []
    ids = sorted(set(map(str, job_ids)))
    for i in range(0, len(ids), chunk):
        cmd = ["sacct", "-j", ",".join(ids[i:i + chunk]), "-X", "-D", "-P", "-n", f"--format={','.join(SACCT_FIELDS)}"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as e:
            raise UsageError(f"cost: cannot run sacct ({e}); SLURM job costs come from the cluster's accounting") from None
        if out.returncode:
            raise UsageError(f"cost: `{' '.join(cmd)}` failed: {out.stderr.strip() or out.stdout.strip()}")
        for line in out.stdout.splitlines():
            f = line.split("|")
            if len(f) != len(SACCT_FIELDS):
                continue
            rec = dict(zip(SACCT_FIELDS, f))
            rows.append({"job_id": rec["JobID"], "name": rec["JobName"], "elapsed_s": float(rec["ElapsedRaw"] or 0),
                         "cpus": int(rec["AllocCPUS"] or 0), "gpus": allocated_gpus(rec["AllocTRES"]), "state": rec["State"]})
    return pd.DataFrame(rows, columns=["job_id", "name", "elapsed_s", "cpus", "gpus", "state"])


def _order(stage: str) -> tuple:
    return (STAGE_ORDER.index(stage), "") if stage in STAGE_ORDER else (len(STAGE_ORDER), stage)


def cost_table(bench_dir, submitit_dir=None, launcher: str = "local", *, gpus: dict[str, int] | None = None) -> pd.DataFrame:
    """The cost of a run, one row per stage plus a ``total`` row (columns ``COLUMNS``).

    ``bench_dir``: ``results/<preset>/benchmarks``. ``launcher``: ``local`` (every stage from its benchmark
    files) or ``slurm`` (stages with submitit jobs under ``submitit_dir``, default ``bench_dir/../submitit``,
    from ``sacct``; the others from their benchmark files). ``gpus``: stage -> the GPUs each of its jobs run
    outside SLURM was given (``absvit tables --gpus``: what the stage requests, which submitit's local executor
    gives the job); a stage not named has none.
    """
    if launcher not in ("local", "slurm"):
        raise UsageError(f"cost: launcher must be 'local' or 'slurm', got {launcher!r}")
    bench_dir = Path(bench_dir)
    bench = benchmark_jobs(bench_dir)  # an absent folder: no rows
    slurm_jobs = submitit_jobs(submitit_dir or bench_dir.parent / "submitit") if launcher == "slurm" else {}
    records = sacct([j for ids in slurm_jobs.values() for j in ids]) if slurm_jobs else None
    gpus = gpus or {}
    rows = []
    for stage in sorted(set(bench.stage) | set(slurm_jobs), key=_order):
        if stage in slurm_jobs:
            ids = slurm_jobs[stage]
            rec = records[records.job_id.isin(ids)]
            unknown = sorted(set(ids) - set(rec.job_id))
            rows.append({"stage": stage, "jobs": len(ids), "wall_s": float(rec.elapsed_s.sum()),
                         "cpu_core_hours": float((rec.elapsed_s * rec.cpus).sum() / 3600),
                         "gpu_hours": float((rec.elapsed_s * rec.gpus).sum() / 3600), "source": "sacct",
                         "note": f"{len(unknown)} job(s) unknown to sacct, not counted: {', '.join(unknown)}" if unknown else ""})
        else:
            b = bench[bench.stage == stage]
            unsampled = int(b.cpu_s.isna().sum())
            rows.append({"stage": stage, "jobs": len(b), "wall_s": float(b.wall_s.sum()),
                         "cpu_core_hours": float(b.cpu_s.fillna(0).sum() / 3600),
                         "gpu_hours": float(b.wall_s.sum() * gpus.get(stage, 0) / 3600), "source": "benchmark",
                         "note": f"{unsampled} job(s) ended before Snakemake's first CPU sample" if unsampled else ""})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    total = {"stage": "total", "jobs": int(frame.jobs.sum()), "wall_s": float(frame.wall_s.sum()),
             "cpu_core_hours": float(frame.cpu_core_hours.sum()), "gpu_hours": float(frame.gpu_hours.sum()),
             "source": "+".join(sorted(set(frame.source))), "note": "sum of the stages; critical path not computed"}
    return pd.concat([frame, pd.DataFrame([total], columns=COLUMNS)], ignore_index=True).astype({"jobs": int})


def parse_gpus(specs) -> dict[str, int]:
    """``["pretrain=8", "evaluate=1"]`` (``absvit tables --gpus``) -> stage -> GPUs per job."""
    gpus = {}
    for spec in specs or ():
        stage, _, n = spec.partition("=")
        if not (stage and n.isdigit()):
            raise UsageError(f"--gpus: expected STAGE=N (a stage and its GPUs per job, e.g. pretrain=8), got {spec!r}")
        gpus[stage] = int(n)
    return gpus


def _display(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"stage": df.stage, "jobs": df.jobs.astype(int).astype(str), "wall (sum)": df.wall_s.map(hms),
                         "CPU core-h": df.cpu_core_hours.map(hours), "GPU-h": df.gpu_hours.map(hours),
                         "source": df.source, "note": df.note.fillna("")})


def markdown(df: pd.DataFrame) -> str:
    """The cost table as a GitHub Markdown table (the note column only where a stage has a note)."""
    d = _display(df)
    if not d.note.str.len().iloc[:-1].any():
        d = d.drop(columns="note")
    return markdown_table(d, index=False)


def cost_section(df: pd.DataFrame, *, title: str = "## Cost") -> str:
    """The report's cost section (Markdown): the table and how each number was measured."""
    sources = set(df.source.iloc[:-1])
    if not sources:
        how = ["No benchmark files or SLURM jobs were found: nothing to count."]
    else:
        cpu = ["Snakemake's benchmark cpu_time (user + system time of each job's processes, sampled: what ran after "
               "the last sample is missed)" if "benchmark" in sources else "",
               "SLURM elapsed x allocated CPUs (sacct)" if "sacct" in sources else ""]
        how = ["- CPU core-hours: " + "; ".join(filter(None, cpu)) + ".",
               "- GPU-hours: " + ("SLURM elapsed x allocated GPUs (sacct); " if "sacct" in sources else "")
               + "jobs run outside SLURM count the GPUs they were given (0 for CPU runs)."]
    return "\n".join([title, "", NOTE, "", markdown(df), "", *how, ""])


def latex(df: pd.DataFrame, *, caption: str = "Compute cost per stage.", label: str = "tab:cost") -> str:
    """A booktabs table; needs nothing beyond ``\\usepackage{booktabs}``."""
    d = _display(df)
    body = [" & ".join(tex_escape(v) for v in row[:5]) + r" \\" for row in d.itertuples(index=False)]
    lines = ["% Generated by absvit.cost; needs only \\usepackage{booktabs}.", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{tex_escape(caption)} {tex_escape(NOTE)}}}", rf"\label{{{label}}}", r"\begin{tabular}{lrrrr}", r"\toprule",
             r"Stage & Jobs & Wall (sum) & CPU core-h & GPU-h \\", r"\midrule", *body[:-1],
             *([r"\midrule"] if len(body) > 1 else []), body[-1],
             r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def write_cost(out_dir, df: pd.DataFrame) -> list[Path]:
    """``cost.csv`` (the numbers), ``cost.md`` (``cost_section``) and ``cost.tex`` (booktabs), each written atomically."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"cost.{ext}" for ext in ("csv", "md", "tex")]
    for path, text in zip(paths, (df.round(6).to_csv(index=False), cost_section(df), latex(df))):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return paths


def cost_metrics(df: pd.DataFrame) -> dict[str, float]:
    """``cost.<stage>.<measure>`` for every row (the total row as ``cost.total.*``)."""
    return {f"cost.{row.stage}.{m}": float(getattr(row, m)) for row in df.itertuples()
            for m in ("jobs", "wall_s", "cpu_core_hours", "gpu_hours")}


def log_cost(df: pd.DataFrame, *, preset: str, tracking_uri: str | None = None, track: bool = True,
             artifacts=(), launcher: str | None = None) -> dict[str, float]:
    """Mirror the table into one MLflow run (``cost/<preset>``, tagged ``absvit.stage=cost``): metrics
    ``cost.total.gpu_hours``, ``cost.pretrain.wall_s``, ...; ``artifacts``: files to attach (write_cost's).
    Returns the metrics; with ``track=False`` nothing is logged."""
    from absvit.tracking import Tracker, run_tags

    metrics = cost_metrics(df)
    if not track:
        return metrics
    tracker = Tracker(f"cost/{preset}", uri=tracking_uri, params={"preset": preset, "launcher": launcher or "",
                                                                  "sources": "+".join(sorted(set(df.source)))},
                      tags=run_tags("cost", preset, "cost"))
    tracker.log_metrics(metrics)
    for path in artifacts:
        tracker.log_artifact(path)
    tracker.finish()
    return metrics
