"""Reading and writing checkpoints in the official AbSViT / DeiT format, and the training state a run resumes from.

An official file is a ``torch.save`` dict with ``model`` (and optionally ``model_ema``,
``optimizer``, ``lr_scheduler``, ``epoch``, ``scaler``, ``args``); a plain state dict is
accepted too. Files are read with ``weights_only=True``: nothing in them is executed, and
the only class allowed besides tensors and containers is the ``argparse.Namespace`` that
official files keep their training arguments in. Fitting the weights to a model (strict checks,
``load_checkpoint``) is ``absvit.models.weights``'s: this module knows no model.
"""
from __future__ import annotations

import argparse
import json
import pickle
import random
import re
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed
import torch.nn as nn

from absvit.errors import CheckpointError, DiskFull, StaleCheckpoint, UsageError
from absvit.formats import flatten
from absvit.io import save_torch, write_text

SAFE_GLOBALS = [argparse.Namespace]
WEIGHT_KEYS = ("model", "model_ema")


def read_checkpoint(path) -> dict:
    """Load a checkpoint file without executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: an empty file (0 bytes); expected a torch.save checkpoint")
    not_torch = (f"{path}: not a torch checkpoint (corrupt, or not written by torch.save: it starts with "
                 f"{path.open('rb').read(16)!r})")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        forbidden = re.search(r"GLOBAL (\S+)", str(e))
        if forbidden is None:
            raise CheckpointError(not_torch) from e
        raise CheckpointError(
            f"{path}: refused: the file pickles {forbidden.group(1)}; only tensors, containers and "
            "argparse.Namespace are allowed. Checkpoints are loaded with weights_only=True, never executed."
        ) from e
    except (KeyError, IndexError, EOFError) as e:  # what the unpickler raises on bytes that are no pickle at all
        raise CheckpointError(not_torch) from e
    except (RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict (a state dict, or a dict with 'model'), got {type(obj).__name__}")
    return dict(obj)


def extract_state_dict(ckpt: Mapping, path, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """The weights in ``ckpt``: ``model`` (or ``model_ema`` with ``ema``), or ``ckpt`` itself."""
    want = "model_ema" if ema else "model"
    if any(k in ckpt for k in WEIGHT_KEYS):
        if want not in ckpt:
            raise CheckpointError(f"{path}: no '{want}' entry; the file has {sorted(ckpt)}")
        state = ckpt[want]
    elif ema:
        raise CheckpointError(f"{path}: a plain state dict has no EMA weights ('model_ema' was asked for)")
    else:
        state = ckpt
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: '{want}' is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def recorded_setup(ckpt: Mapping) -> dict:
    """What a checkpoint says about itself: model name, input size, class list (None where it is silent).

    Our files record ``arch``, ``img_size`` and ``classes``; official (DeiT-style) files keep the
    model name and input size in their training ``args``.
    """
    args = ckpt.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, Mapping) else {}
    classes = ckpt.get("classes")
    return {"model": ckpt.get("arch") or args.get("model"),
            "img_size": ckpt.get("img_size") or args.get("input_size") or args.get("img_size"),
            "classes": list(classes) if classes else None}


def agree(flag: str, given, recorded, path, show=repr):
    """The checkpoint's own value unless a flag was given; a flag that disagrees with the file is an error."""
    if given is not None and recorded is not None and given != recorded:
        raise UsageError(f"{flag} {show(given)} disagrees with {path}, which records {show(recorded)}; "
                         f"drop {flag} to use the checkpoint's")
    return given if given is not None else recorded


def save_checkpoint(path, model: nn.Module, **extra) -> None:
    """Write ``{'model': state_dict, **extra}`` atomically (official layout)."""
    save_torch(path, {"model": model.state_dict(), **extra})


# -- training state: resuming only the same run, exactly --------------------------------------------------


def save_state(path, model: nn.Module, described: dict, run_id, *, ema=None, **state) -> None:
    """A self-describing checkpoint in the official layout (``model``, ``model_ema``, ``args``, ...), atomically.
    ``described``: ``arch``, ``img_size``, ``classes`` and the run's identity ``run`` (see ``checkpoint_to_resume``)."""
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


def _shown(v) -> str:
    if isinstance(v, str) and v.startswith(("sha256:", "tree:")):  # an input's digest (absvit.digests): its head
        return v[:v.index(":") + 13]
    return f"{len(v)} entries" if isinstance(v, (list, tuple)) and len(v) > 4 else repr(v)


def identity_differences(recorded: dict, current: dict) -> list[str]:
    """``key: checkpoint X vs now Y`` for every value of the run's identity that differs."""
    a, b = flatten(recorded), flatten(current)
    return [f"{k}: checkpoint {_shown(a.get(k, '(absent)'))} vs now {_shown(b.get(k, '(absent)'))}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def checkpoint_to_resume(out: Path, identity: dict, *, fresh_on_change: bool) -> dict | None:
    """``out/checkpoint.pth`` if it belongs to the run ``identity`` describes, else None (start fresh).

    A checkpoint of another run (a changed recipe, model, class list, seed or world size, or an input whose
    content changed: ``identity["inputs"]``, ``absvit.digests``) is refused with the differing keys named (an
    input as ``inputs.<name>``); with ``fresh_on_change`` (what the pipeline
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


def rng_state() -> dict:
    """This process's RNG state (torch CPU and CUDA, Python, numpy) as tensors and containers: weights_only loads it."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": np_state[2],
                      "has_gauss": np_state[3], "gauss": np_state[4]},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


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


def resume(ckpt: dict, path, *, model: nn.Module, optimizer, rank: int, counter: str, scheduler=None,
           ema=None) -> tuple[int, str | None]:
    """Load a training checkpoint of the same run (``checkpoint_to_resume``) into the model, its EMA, the
    optimizer and scheduler and this process's RNGs; returns where it stopped (``ckpt[counter]``: the epoch or
    iteration) and the MLflow run to continue."""
    model.load_state_dict(extract_state_dict(ckpt, path))
    if ema is not None:
        ema.module.load_state_dict(extract_state_dict(ckpt, path, ema=True))
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["lr_scheduler"])
    saved = ckpt["rng"]
    set_rng_state(saved[rank] if isinstance(saved, list) else saved)  # a dict: written by a single process
    return int(ckpt[counter]), ckpt.get("mlflow_run_id")


def truncate_log(path: Path, key: str, upto: int) -> None:
    """Drop JSON-lines log rows whose ``key`` (epoch, iteration) is past the checkpoint being resumed."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)[key] <= upto]
        write_text(path, "".join(line + "\n" for line in lines))
