"""MLflow mirror of a run's files. Files are the source of truth; a tracking store that is
down never stops training: the run says so once and carries on."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path

from absvit.formats import flatten

DEFAULT_STORE = Path("results") / "mlflow.db"
EXPERIMENT = "absvit-bench"
COMMAND: list[str] | None = None  # the verb's argv, set by ``absvit.cli.main``
PACKAGES = ("absvit-bench", "torch", "torchvision", "timm", "numpy", "mlflow", "snakemake", "submitit")


def run_tags(stage: str, preset: str | None, run: str, **extra) -> dict:
    """The tags every run carries, so that the UI can filter a preset's runs and follow their lineage:
    ``absvit.stage``, ``absvit.preset`` (``adhoc`` outside the pipeline), ``absvit.run`` and any ``extra``
    (``absvit.<key>``; None values are left out)."""
    tags = {"stage": stage, "preset": preset or "adhoc", "run": run, **extra}
    return {f"absvit.{k}": str(v) for k, v in tags.items() if v is not None}


def tracking_uri(uri: str | None = None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{DEFAULT_STORE.resolve()}"


def provenance() -> dict:
    """What makes a run reproducible besides its own parameters: code, packages, command."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return {"git_commit": (commit or "unknown") + ("+dirty" if dirty else ""), "versions": versions,
            "python": sys.version.split()[0], "command": " ".join(["absvit", *(COMMAND or sys.argv[1:])])}


PROBE_TIMEOUT_S = 5.0
_UNREACHABLE: dict[str, str] = {}  # uri -> why, for this process: probed once, said once


def probe(uri: str) -> str | None:
    """Why the tracking server at ``uri`` cannot be reached (None if it answers), asked once per process with a
    short timeout: MLflow's own client retries a dead server for minutes per call. Only HTTP stores are probed."""
    if not uri.startswith(("http://", "https://")):
        return None
    if uri not in _UNREACHABLE:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S):
                _UNREACHABLE[uri] = ""
        except (urllib.error.URLError, OSError, ValueError) as e:
            why = getattr(e, "reason", e)
            _UNREACHABLE[uri] = f"{type(e).__name__}: {why}"
            warnings.warn(f"MLflow tracking at {uri} is unreachable ({_UNREACHABLE[uri]}, probed with a "
                          f"{PROBE_TIMEOUT_S:g} s timeout); this job continues without it (results are still "
                          "written to files)", stacklevel=3)
    return _UNREACHABLE[uri] or None


def _job_logs() -> list[Path]:
    """The submitit job's own stdout/stderr files, when running inside one."""
    try:
        import submitit

        paths = submitit.JobEnvironment().paths
        return [p for p in (paths.stdout, paths.stderr) if p.exists()]
    except Exception:  # noqa: BLE001  (not a submitit job)
        return []


def _store_lock(uri: str):
    """Jobs that start together (the DAG's first pretraining runs) must not create a new sqlite store's
    tables and experiment at the same time: the losers' migrations fail ("duplicate column name") and
    they would run untracked. A file lock beside the database serialises that first access."""
    if not uri.startswith("sqlite:///"):
        return nullcontext()
    from filelock import FileLock

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{db}.lock", timeout=300)


class Tracker:
    """One MLflow run; ``run_id`` lets a resumed job continue the same run.

    As a context manager it ends the run as FINISHED, or KILLED (preempted, timed out: the requeued job continues
    it), or FAILED, by how the block ends."""

    def __init__(self, run_name: str, *, uri: str | None = None, run_id: str | None = None,
                 params: dict | None = None, tags: dict | None = None, enabled: bool = True):
        self.run_id, self.active = None, False
        if not enabled:
            return
        self.uri = tracking_uri(uri)
        if probe(self.uri):
            return
        try:
            import mlflow

            self._mlflow = mlflow
            mlflow.set_tracking_uri(self.uri)
            with _store_lock(self.uri):
                if mlflow.get_experiment_by_name(EXPERIMENT) is None and self.uri.startswith("sqlite:"):
                    artifacts = Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts"
                    mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts.resolve().as_uri())
                mlflow.set_experiment(EXPERIMENT)
            run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=tags)
            self.run_id, self.active = run.info.run_id, True
            if not run_id:  # a resumed run keeps the parameters it started with
                config = {**(params or {}), **provenance()}
                mlflow.log_params({k: str(v)[:6000] for k, v in flatten(config).items()})
                mlflow.log_dict(config, "config.json")
        except Exception as e:  # noqa: BLE001  (any store failure: keep training)
            self._warn(e)

    def _warn(self, e: Exception) -> None:
        self.active = False
        warnings.warn(f"MLflow tracking at {self.uri} is unreachable ({type(e).__name__}: {e}); "
                      "continuing without it (results are still written to files)", stacklevel=3)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if self.active:
            try:
                self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
            except Exception as e:  # noqa: BLE001
                self._warn(e)

    def log_artifact(self, path) -> None:
        if self.active:
            try:
                self._mlflow.log_artifact(str(path))
            except Exception as e:  # noqa: BLE001
                self._warn(e)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.finish("FINISHED" if kind is None else "KILLED" if issubclass(kind, (SystemExit, KeyboardInterrupt))
                    else "FAILED")

    def finish(self, status: str = "FINISHED") -> None:
        if self.active:
            try:
                for path in _job_logs():
                    self._mlflow.log_artifact(str(path), artifact_path="logs")
                self._mlflow.end_run(status=status)
            except Exception as e:  # noqa: BLE001
                self._warn(e)
            self.active = False


def finished_runs(uri: str, preset: str, where: str, max_results: int = 1000) -> list:
    """Finished runs of ``preset`` matching ``where`` (an MLflow filter), newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else client.search_runs(
        [exp.experiment_id], f"{where} and tags.`absvit.preset` = '{preset}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=max_results)
