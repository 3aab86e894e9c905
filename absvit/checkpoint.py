"""Reading and writing checkpoints in the official AbSViT / DeiT format.

An official file is a ``torch.save`` dict with ``model`` (and optionally ``model_ema``,
``optimizer``, ``lr_scheduler``, ``epoch``, ``scaler``, ``args``); a plain state dict is
accepted too. Files are read with ``weights_only=True``: nothing in them is executed, and
the only class allowed besides tensors and containers is the ``argparse.Namespace`` that
official files keep their training arguments in.
"""
from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from absvit.errors import CheckpointError
from absvit.io import atomic_path

SAFE_GLOBALS = [argparse.Namespace]
WEIGHT_KEYS = ("model", "model_ema")


def read_checkpoint(path) -> dict:
    """Load a checkpoint file without executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        forbidden = re.search(r"GLOBAL (\S+)", str(e))
        if forbidden is None:
            raise CheckpointError(f"{path}: not a readable torch checkpoint (corrupt or not a torch.save file)") from e
        raise CheckpointError(
            f"{path}: refused: the file pickles {forbidden.group(1)}; only tensors, containers and "
            "argparse.Namespace are allowed. Checkpoints are loaded with weights_only=True, never executed."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
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


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path) -> None:
    """Strict match of names and shapes, with every offending key in the message."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatch {mismatched}")
    if problems:
        raise CheckpointError(f"{path}: does not fit {type(model).__name__}: " + "; ".join(problems))


def load_checkpoint(model: nn.Module, path, *, ema: bool = False) -> nn.Module:
    """Load an official-format checkpoint (or plain state dict) into ``model``, strictly."""
    state = extract_state_dict(read_checkpoint(path), path, ema=ema)
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(path, model: nn.Module, **extra) -> None:
    """Write ``{'model': state_dict, **extra}`` atomically (official layout)."""
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), **extra}, tmp)
