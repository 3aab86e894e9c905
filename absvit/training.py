"""Pieces every training loop shares: resuming only the same run, RNG state for exact resume,
the non-finite-loss stop."""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from absvit.checkpoint import read_checkpoint
from absvit.errors import StaleCheckpoint
from absvit.io import atomic_path


class NonFiniteLoss(FloatingPointError):
    """The loss became inf/NaN; the message names the step and the last good checkpoint."""


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
