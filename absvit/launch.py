"""Run a CLI verb through submitit: ``absvit submit [launcher options] -- <verb> [args]``.

``--launcher local`` runs the verb in a child process of the calling (Snakemake) job;
``--launcher slurm`` submits it to SLURM and waits. Either way the job's output is copied into
this process's stdout (the Snakemake rule's log) while it runs, and the call returns when the
verb is done, or fails, with the job's log path, when the job fails.

Time limits and preemption: the task is ``Checkpointable``. On SLURM's warning signal
submitit requeues it with the same arguments; ``absvit pretrain`` then resumes from the
``checkpoint.pth`` of its last finished epoch, so a long run survives any number of limits.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import submitit

from absvit.errors import JobFailed


class Verb(submitit.helpers.Checkpointable):
    """A picklable call of ``python -m absvit <argv>`` inside the job: ``entry(argv)``, the CLI's ``main``
    (pickled by name)."""

    def __init__(self, argv: list[str], entry: Callable[[list[str]], int], cpus: int | None = None):
        self.argv, self.entry, self.cpus = list(argv), entry, cpus

    def __call__(self) -> int:
        if self.cpus:  # stay inside the allocation: oversubscribed CPU threads slow torch down many times over
            os.environ["OMP_NUM_THREADS"] = str(self.cpus)  # torch reads it when (and if) the verb imports it
            if "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(self.cpus)
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one task per GPU: torch.distributed from the job's environment
            dist = submitit.helpers.TorchDistributedEnvironment().export()
            os.environ.setdefault("LOCAL_RANK", str(dist.local_rank))
        status = self.entry(self.argv)
        if status:  # a failed verb fails the job (submitit would otherwise report it as completed)
            raise JobFailed(f"absvit {' '.join(self.argv[:1])} exited with status {status}")
        return status


@dataclass
class Resources:
    """What a stage asks SLURM for (config.yaml: ``slurm.<stage>``)."""

    timeout_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # processes per node; default one per GPU (one on a CPU node)
    cpus_per_task: int = 2
    mem_gb: float = 4
    partition: str | None = None
    constraint: str | None = None
    account: str | None = None
    qos: str | None = None
    max_num_timeout: int = 100  # requeues after hitting the time limit (preemptions are not counted)
    extra: dict = field(default_factory=dict)

    def executor_parameters(self, launcher: str) -> dict:
        params = dict(timeout_min=self.timeout_min, nodes=self.nodes, cpus_per_task=self.cpus_per_task,
                      tasks_per_node=self.tasks_per_node or max(self.gpus_per_node, 1), gpus_per_node=self.gpus_per_node,
                      mem_gb=self.mem_gb)
        if launcher == "slurm":
            slurm = dict(slurm_partition=self.partition, slurm_constraint=self.constraint,
                         slurm_account=self.account, slurm_qos=self.qos)
            params.update({k: v for k, v in slurm.items() if v is not None})
            params.update({f"slurm_{k}": v for k, v in self.extra.items()})
        return params


def submit(argv: list[str], *, entry: Callable[[list[str]], int], launcher: str, folder, resources: Resources,
           name: str = "absvit") -> int:
    """Run ``entry(argv)`` (the CLI's ``main``) as a local or SLURM job with ``resources``; wait for it, copying
    its output here; a failed job raises ``JobFailed`` naming its log."""
    if launcher not in ("local", "slurm"):
        raise ValueError(f"launcher must be 'local' or 'slurm', got {launcher!r}")
    folder = Path(folder)
    extra = {"slurm_max_num_timeout": resources.max_num_timeout} if launcher == "slurm" else {}
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=launcher, **extra)
    executor.update_parameters(name=name, **resources.executor_parameters(launcher))
    job = executor.submit(Verb(argv, entry, cpus=resources.cpus_per_task))
    print(f"submitted {' '.join(argv[:1])} as {launcher} job {job.job_id}; logs: {job.paths.stdout} {job.paths.stderr}",
          flush=True)
    output = _Output(job)
    _wait(job, output)
    try:
        job.results()  # every task (one per process)
    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
        output.copy(final=True)
        verb = re.search(r"JobFailed: (.+)", str(e))  # the verb's own exit status, else submitit's first line
        reason = verb[1] if verb else str(e).strip().splitlines()[0]
        raise JobFailed(f"{launcher} job {job.job_id} ({' '.join(argv)}) failed: {reason}; see its log {job.paths.stderr}") from None
    output.copy(final=True)
    return 0


def _wait(job, output: "_Output") -> None:
    """Poll every 0.1 s for the first minute (submitit polls every second: most pipeline jobs last a
    few seconds, and a second lost per job is minutes over the DAG), then every 2 s; copy the
    job's new output each time."""
    start = time.monotonic()
    while not job.done():
        output.copy()
        time.sleep(0.1 if time.monotonic() - start < 60 else 2.0)


class _Output:
    """Copies what the job has appended to its stdout / stderr files since the last call."""

    def __init__(self, job):
        self.offsets = {path: 0 for path in (job.paths.stdout, job.paths.stderr)}

    def copy(self, final: bool = False) -> None:
        for path, offset in self.offsets.items():
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offset)
                    new = f.read()
                end = len(new) if final else new.rfind(b"\n") + 1  # whole lines only: the rest comes next time
                if end:
                    sys.stdout.write(new[:end].decode(errors="replace"))
                    self.offsets[path] = offset + end
        sys.stdout.flush()
