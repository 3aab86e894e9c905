"""Pieces every training loop shares: RNG state for exact resume, the non-finite-loss stop."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

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


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def truncate_log(path: Path, key: str, upto: int) -> None:
    """Drop JSON-lines log rows whose ``key`` (epoch, iteration) is past the checkpoint being resumed."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)[key] <= upto]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines))
