"""The training engine both loops share (DeiT's ``engine.py`` split): the verbs set up data, model
and optimiser; here are the device and seeds, the training step (with its non-finite stop, or
without a host sync for ``training.FiniteCheck`` to check later), torch.compile of the objective,
the progress lines a cluster log shows while a job runs, evaluation top-1, the tracked-run context
and the atomic training-state files.

The progress lines are ``absvit.progress``'s.
"""
from __future__ import annotations

import json
import math
import random
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed

from absvit.distributed import DistInfo, init_distributed
from absvit.errors import DiskFull
from absvit.io import save_torch
from absvit.progress import LOG_EVERY_S, Progress, duration, timed  # noqa: F401  (the verbs use them through here)
from absvit.training import NonFiniteLoss


def setup(seed: int) -> tuple[DistInfo, torch.device]:
    """Process group, this process's device, and every RNG seeded with ``seed + rank``."""
    dist = init_distributed()
    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    for seed_fn in (torch.manual_seed, np.random.seed, random.seed):
        seed_fn(seed + dist.rank)
    return dist, device


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def distributed(objective: torch.nn.Module, dist: DistInfo, device: torch.device) -> torch.nn.Module:
    """The objective (a module computing the loss) under DDP when there are several processes."""
    if not dist.enabled:
        return objective
    return torch.nn.parallel.DistributedDataParallel(objective, device_ids=[dist.local_rank] if device.type == "cuda" else None)


def compiled(objective: torch.nn.Module, setting: str, device: torch.device) -> torch.nn.Module:
    """The objective under torch.compile when ``setting`` (recipe key ``compile``) is "on", or "auto" on CUDA.

    Compile the DDP-wrapped module (torch's advice: DDP's optimizer splits the graph at its buckets)."""
    if setting == "on" or (setting == "auto" and device.type == "cuda"):
        return torch.compile(objective)
    return objective


def optimizer_step(objective, inputs, targets, optimizer, *, amp) -> torch.Tensor:
    """One optimiser step on ``objective(inputs, targets)``; returns the loss, detached, without waiting
    for the device (no host sync: check it with ``training.FiniteCheck``)."""
    with amp:
        loss = objective(inputs, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_step(objective, inputs, targets, optimizer, *, amp, where: str, ckpt_path) -> float:
    """One optimiser step on ``objective(inputs, targets)``; a non-finite loss stops the run before the step."""
    with amp:
        loss = objective(inputs, targets)
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLoss(f"non-finite loss ({value}) at {where}; stopping. The last good checkpoint is kept at {ckpt_path}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


def accuracy(model, loader, device, *, restrict: list[int] | None = None, every_s: float = LOG_EVERY_S,
             progress: Progress | None = None, header: str = "Test:") -> dict:
    """Top-1 / top-5 (%) over ``loader``; with ``restrict``, only those classes' logits compete.
    ``progress``: count the batches in a larger loop's progress (ImageNet-C's 75 folders).

    As training runs: bf16 autocast and channels-last on CUDA, non-blocking copies; the hit counts stay on the
    device and are read once at the end (no host sync per batch; on CPU all of it is plain fp32)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    model.eval()
    if cuda:  # outside inference mode: converted parameters (the EMA's) must stay usable by autograd and in-place updates
        model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return _accuracy(model, loader, device, restrict, progress or Progress(header, len(loader), every_s=every_s, device=device))


def _accuracy(model, loader, device: torch.device, restrict: list[int] | None, progress: Progress) -> dict:
    cuda = device.type == "cuda"
    index = torch.tensor(restrict, device=device) if restrict is not None else None  # one copy, before the loop
    hits = torch.zeros(2, dtype=torch.int64, device=device)  # top-1, top-5
    total = 0  # the batch size is known on the host: no tensor made from it per batch (a blocking copy on CUDA)
    for data, (images, labels) in timed(loader):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            logits = model(images)
        logits = logits.float() if index is None else logits.float()[:, index]
        pred = logits.topk(min(5, logits.shape[1]), dim=-1).indices
        if index is not None:
            pred = index[pred]
        hits += torch.stack([(pred[:, 0] == labels).sum(), (pred == labels[:, None]).any(-1).sum()])
        total += labels.numel()
        progress.step(images=labels.numel(), data=data)
    top1, top5 = hits.tolist()  # the one host sync
    return {"top1": 100.0 * top1 / max(total, 1), "top5": 100.0 * top5 / max(total, 1), "images": total}


@contextmanager
def tracked(tracker):
    """Ends the MLflow run as FINISHED, or KILLED (preempted, timed out: the requeued job continues it), or FAILED."""
    try:
        yield tracker
    except (SystemExit, KeyboardInterrupt):
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()


def append_row(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def save_state(path: Path, model, described: dict, run_id, *, ema=None, **state) -> None:
    """A self-describing checkpoint in the official layout (``model``, ``model_ema``, ``args``, ...), atomically."""
    state = {"model": model.state_dict(), "args": described["run"]["recipe"], **described, "mlflow_run_id": run_id, **state}
    if ema is not None:
        state["model_ema"] = ema.module.state_dict()
    save_torch(path, state)


@contextmanager
def resumable(ckpt_path: Path, kept: str | None):
    """A full disk while writing training state (``DiskFull``) also says what is kept and that a rerun resumes.

    ``kept``: the checkpoint ``ckpt_path`` holds, e.g. ``"epoch 3"``; None where none was written yet.
    """
    try:
        yield
    except DiskFull as e:
        raise e.noted(f"the last good checkpoint ({kept}) is kept at {ckpt_path}; free space and rerun: the run resumes "
                      "from it" if kept else f"nothing is lost, but no checkpoint exists yet at {ckpt_path}; free space "
                      "and rerun: the run starts from the beginning") from e

