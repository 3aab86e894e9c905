"""Reading and writing checkpoints in the official AbSViT / DeiT format.

An official file is a ``torch.save`` dict with ``model`` (and optionally ``model_ema``,
``optimizer``, ``lr_scheduler``, ``epoch``, ``scaler``, ``args``); a plain state dict is
accepted too. Files are read with ``weights_only=True``: nothing in them is executed, and
the only class allowed besides tensors and containers is the ``argparse.Namespace`` that
official files keep their training arguments in. Fitting the weights to a model (strict checks,
``load_checkpoint``) is ``absvit.models.weights``'s: this module knows no model.
"""
from __future__ import annotations

import argparse
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from absvit.errors import CheckpointError, UsageError
from absvit.io import save_torch

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
