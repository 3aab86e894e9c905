"""Pieces every training loop shares: resuming only the same run, RNG state for exact resume,
augmentation draws that do not depend on the loader's workers, the non-finite-loss stop."""
from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from absvit.checkpoint import read_checkpoint
from absvit.errors import StaleCheckpoint
from absvit.io import atomic_path


class NonFiniteLoss(FloatingPointError):
    """The loss became inf/NaN; the message names the step and the last good checkpoint."""


class FiniteCheck:
    """Stops a run whose loss became inf/NaN without a host sync per step.

    Call it with each step's loss (a device tensor) and where it happened; the losses stay on the
    device and are looked at together every ``every`` steps and by ``check()`` (call it at the end
    of an epoch, before the checkpoint is written). The error names the first bad step. Steps after
    it have run by then, so the weights in memory are spoilt, but the checkpoint on disk is the last
    good one. With several processes every process checks at the same steps and all of them stop.
    """

    def __init__(self, ckpt_path, *, every: int = 50, dist=None):
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


class SampleSeeds(torch.utils.data.Sampler):
    """Wraps a sampler to yield ``(index, seed)``: each sample is augmented under its own seed, a
    function of (run seed, epoch, rank, position in the epoch).

    So the augmentations do not depend on the loader's workers: their number, or their RNG history
    (persistent workers carry it from epoch to epoch; a resumed run starts fresh ones). ``workers``
    stays a resource key and a resumed run draws what the uninterrupted one drew.
    """

    def __init__(self, sampler, *, seed: int, rank: int = 0):
        self.sampler, self.seed, self.rank, self.epoch = sampler, seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        entropy = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(2, np.uint64)[0]
        g = torch.Generator().manual_seed(int(entropy) >> 1)
        seeds = torch.randint(0, 2**62, (len(self.sampler),), generator=g).tolist()
        return zip(self.sampler, seeds)


class Seeded:
    """A map-style dataset read with ``(index, seed)`` items (``SampleSeeds``): ``dataset[index]``
    under that seed (torch's CPU generator, ``random`` and numpy's global RNG, as torchvision's and
    timm's transforms use them), the process's own RNG state put back afterwards."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with seeded(seed):
            return self.dataset[index]


@contextmanager
def seeded(seed: int):
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.random.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's stays untouched
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": np_state[2],
                      "has_gauss": np_state[3], "gauss": np_state[4]},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_states(dist) -> list[dict]:
    """Every process's RNG state, rank by rank (a collective call when there are several): rank 0
    saves them all, so that each process of a resumed run continues its own random stream."""
    if not dist.enabled:
        return [rng_state()]
    states = [None] * dist.world_size
    torch.distributed.all_gather_object(states, rng_state())
    return states


def restore_rng(saved, rank: int) -> None:
    set_rng_state(saved[rank] if isinstance(saved, list) else saved)  # a dict: written by a single process


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def truncate_log(path: Path, key: str, upto: int) -> None:
    """Drop JSON-lines log rows whose ``key`` (epoch, iteration) is past the checkpoint being resumed."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)[key] <= upto]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _show(v) -> str:
    return f"{len(v)} entries" if isinstance(v, (list, tuple)) and len(v) > 4 else repr(v)


def identity_differences(recorded: dict, current: dict) -> list[str]:
    """``key: checkpoint X vs now Y`` for every value of the run's identity that differs."""
    a, b = _flat(recorded), _flat(current)
    return [f"{k}: checkpoint {_show(a.get(k, '(absent)'))} vs now {_show(b.get(k, '(absent)'))}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def checkpoint_to_resume(out: Path, identity: dict, *, fresh_on_change: bool) -> dict | None:
    """``out/checkpoint.pth`` if it belongs to the run ``identity`` describes, else None (start fresh).

    A checkpoint of another run (a changed recipe, model, dataset, class list, seed or world
    size) is refused with the differing keys named; with ``fresh_on_change`` (what the pipeline
    passes: Snakemake reruns a job whose settings changed) it and its metrics log are moved
    aside into ``out/stale-<time>/`` instead, never deleted.
    """
    path = out / "checkpoint.pth"
    if not path.exists():
        return None
    ckpt = read_checkpoint(path)
    recorded = ckpt.get("run")
    diffs = (["(no run identity recorded: written by an older absvit-bench)"] if recorded is None
             else identity_differences(recorded, identity))
    if not diffs:
        return ckpt
    if not fresh_on_change:
        raise StaleCheckpoint(f"{path} belongs to a different run; it differs in " + "; ".join(diffs)
                              + ". Resume with the settings it was written with, move it aside, or pass "
                              "--fresh-on-change to move it aside and start fresh")
    stale = out / time.strftime("stale-%Y%m%d-%H%M%S")
    stale.mkdir()
    for name in ("checkpoint.pth", "metrics.jsonl"):
        if (out / name).exists():
            (out / name).rename(stale / name)
    print(f"{path} belongs to a different run ({'; '.join(diffs)}); moved it aside to {stale} and starting fresh",
          flush=True)
    return None
