"""The loops every stage runs, and nothing else (DeiT's ``engine.py``): ``train_one_epoch`` for pretraining,
segmentation and V&L fine-tuning, ``evaluate`` for every evaluation (top-1 through ``accuracy``, mIoU's
confusion matrix, VQA scores).

Both loops run as the GPU wants them, without a host sync per step: bf16 autocast, channels-last images and
non-blocking copies on CUDA; the loss is checked for inf/NaN every few steps (``FiniteCheck``), the progress
line reads it only when it prints, and evaluation metrics accumulate on the device. On CPU all of it is plain
fp32.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.distributed

from absvit.progress import Progress, timed
from absvit.runtime import autocast

FINITE_CHECK_EVERY = 50  # steps between the inf/NaN checks of the loss (and at the end of every loop)


class NonFiniteLoss(FloatingPointError):
    """The loss became inf/NaN; the message names the step and the last good checkpoint."""


class FiniteCheck:
    """Stops a run whose loss became inf/NaN without a host sync per step.

    Call it with each step's loss (a device tensor) and where it happened; the losses stay on the
    device and are looked at together every ``every`` steps and by ``check()`` (the loop calls it at its
    end; call it before writing a checkpoint mid-loop). The error names the first bad step. Steps after
    it have run by then, so the weights in memory are spoilt, but the checkpoint on disk is the last
    good one. With several processes every process checks at the same steps and all of them stop.
    """

    def __init__(self, ckpt_path, *, every: int = FINITE_CHECK_EVERY, dist=None):
        self.ckpt_path, self.every, self.dist = ckpt_path, every, dist
        self.pending: list[tuple[torch.Tensor, str]] = []

    def __call__(self, loss: torch.Tensor, where: str) -> None:
        self.pending.append((loss.detach(), where))
        if len(self.pending) >= self.every:
            self.check()

    def check(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        losses = torch.stack([loss.float() for loss, _ in pending])
        bad = ~torch.isfinite(losses)
        flag = bad.any().to(torch.int32)
        if self.dist is not None and self.dist.enabled:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if not flag.item():  # the one host sync, every `every` steps
            return
        if bad.any():
            i = int(bad.nonzero()[0])
            what = f"non-finite loss ({losses[i].item()}) at {pending[i][1]}"
        else:
            what = f"non-finite loss on another process, by {pending[-1][1]}"
        raise NonFiniteLoss(f"{what}; stopping. The last good checkpoint is kept at {self.ckpt_path}")


def to_device(batch, device: torch.device):
    """Tensors (or tuples / lists / dicts of them) on ``device``, copied without blocking; images (4-d) in
    channels-last on CUDA."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if device.type == "cuda" and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_size(batch) -> int:
    """The number of samples in a batch: the first dimension of its (first) tensor."""
    while not isinstance(batch, torch.Tensor):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return batch.shape[0]


def optimizer_step(objective, micro_batches, optimizer, *, amp) -> torch.Tensor:
    """One optimiser step on ``micro_batches``, a list of ``(inputs, targets)``: the gradient of the mean of their
    losses, each micro-batch's loss / k backpropagated in turn (the gradient of one step on their concatenation, for
    a loss that is a mean over equal micro-batches). Under DDP the gradients are all-reduced once, on the last
    micro-batch (``no_sync`` on the others). Returns the mean loss, detached, without waiting for the device."""
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for i, (inputs, targets) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last or not hasattr(objective, "no_sync") else objective.no_sync():
            with amp:
                loss = objective(inputs, targets)
            (loss / len(micro_batches)).backward()
        losses.append(loss.detach())
    optimizer.step()
    return torch.stack(losses).mean()


def train_one_epoch(objective, loader, optimizer, device, *, progress: Progress, finite: FiniteCheck, where: str,
                    mixup=None, on_step: Callable | None = None, accum_steps: int = 1) -> None:
    """One pass over ``loader`` (an epoch, or a fine-tuning run's iterations): an optimiser step per
    ``accum_steps`` batches (``optimizer_step``; a last incomplete group is left out).

    ``objective(inputs, targets)`` is the loss (a module: DDP and torch.compile wrap it whole). ``where``
    names a step in messages, with ``{step}`` for its number (``"epoch 3, step {step}"``). ``mixup``: timm's
    Mixup, applied on the device to each batch. ``on_step(step, loss, lr)`` runs after each optimiser step (the EMA,
    a per-step schedule, metrics rows, mid-run checkpoints: call ``finite.check()`` before writing one); it returns
    True to stop here (a test's stand-in for a killed job). ``progress`` counts optimiser steps."""
    objective.train()
    amp = autocast(device)
    group, waited = [], 0.0
    for data, (inputs, targets) in timed(loader):
        inputs, targets = to_device(inputs, device), to_device(targets, device)
        if mixup is not None:
            inputs, targets = mixup(inputs, targets)
        group.append((inputs, targets))
        waited += data
        if len(group) < accum_steps:
            continue
        loss = optimizer_step(objective, group, optimizer, amp=amp)
        step = progress.done + 1
        finite(loss, where.format(step=step))
        lr = optimizer.param_groups[0]["lr"]
        progress.step(images=sum(batch_size(i) for i, _ in group), data=waited, loss=loss, lr=lr)
        group, waited = [], 0.0
        if on_step is not None and on_step(step, loss, lr):
            break
    finite.check()


def evaluate(model, loader, device, metric, *, progress: Progress, forward: Callable | None = None,
             gradients: bool = False):
    """One pass over ``loader`` in eval mode: ``metric.update(outputs, targets)`` per batch, ``outputs`` =
    ``forward(model, inputs, targets)`` (default ``model(inputs)``) under autocast. Returns ``metric``.

    ``gradients``: ``forward`` takes gradients of its own (an adversarial attack, under ``torch.enable_grad``), so
    the loop runs under ``no_grad`` instead of inference mode, whose tensors autograd refuses.
    The model is put in channels-last on CUDA outside inference mode (converted parameters, an EMA's too, must
    stay usable by autograd and in-place updates afterwards)."""
    device = torch.device(device)
    model.eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    amp = autocast(device)
    with torch.no_grad() if gradients else torch.inference_mode():
        for data, (inputs, targets) in timed(loader):
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            with amp:
                outputs = model(inputs) if forward is None else forward(model, inputs, targets)
            metric.update(outputs, targets)
            progress.step(images=batch_size(inputs), data=data)
    return metric


class TopK:
    """Top-1 / top-5 hits of logits against labels, counted on the device (read once, by ``compute``).
    ``restrict``: only those classes' logits compete (ImageNet-A / -R: 200 of the 1000 classes)."""

    def __init__(self, device, restrict: list[int] | None = None):
        self.index = torch.tensor(restrict, device=device) if restrict is not None else None  # one copy, up front
        self.hits = torch.zeros(2, dtype=torch.int64, device=device)
        self.total = 0  # known on the host: no tensor made from it per batch (a blocking copy on CUDA)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float() if self.index is None else logits.float()[:, self.index]
        pred = logits.topk(min(5, logits.shape[1]), dim=-1).indices
        if self.index is not None:
            pred = self.index[pred]
        self.hits += torch.stack([(pred[:, 0] == labels).sum(), (pred == labels[:, None]).any(-1).sum()])
        self.total += labels.numel()

    def compute(self) -> dict:
        top1, top5 = self.hits.tolist()  # the one host sync
        return {"top1": 100.0 * top1 / max(self.total, 1), "top5": 100.0 * top5 / max(self.total, 1), "images": self.total}


def accuracy(model, loader, device, *, restrict: list[int] | None = None, progress: Progress | None = None,
             every_s: float | None = None, header: str = "Test:") -> dict:
    """Top-1 / top-5 (%) and the image count over ``loader``; ``progress``: count the batches in a larger
    loop's progress (ImageNet-C's 75 folders)."""
    device = torch.device(device)
    if progress is None:
        progress = Progress(header, len(loader), device=device, **({"every_s": every_s} if every_s else {}))
    return evaluate(model, loader, device, TopK(device, restrict), progress=progress).compute()
