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


def _some(keys: list[str], n: int = 5) -> str:
    more = f" ... +{len(keys) - n} more" if len(keys) > n else ""
    return f"{keys[:n]}{more}"


# The models a file is compared against when it does not fit: this project's and the paper's baselines.
CANDIDATES = ("absvit_*", "vit_*_patch8_64", "vit_tiny_patch8_224_gap", "vit_tiny_patch16_224",
              "vit_small_patch16_224", "vit_base_patch16_224")


def likely_models(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Registered models whose weights have exactly the names and shapes of ``state`` (position
    embedding and classifier size aside). Built on the meta device: no memory, milliseconds each."""
    import timm

    import absvit.models  # noqa: F401  (registers the candidates)

    head = state.get("head.weight")
    fits = []
    for name in timm.list_models(list(CANDIDATES)):
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=0 if head is None else head.shape[0])
        ours = model.state_dict()
        if set(ours) == set(state) and all(ours[k].shape == state[k].shape for k in ours if k != "pos_embed"):
            fits.append(name)
    return fits


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], path, *, arch: str | None = None) -> None:
    """Strict match of names and shapes; a mismatch is summarised (counts, first keys, the likely model)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys {_some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys {_some(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches {_some(mismatched, 3)}")
    if problems:
        guess = [arch] if arch else likely_models(state)
        hint = f"; the file {'says it is' if arch else 'fits'} {' / '.join(guess[:4])}" if guess else ""
        raise CheckpointError(f"{path}: does not fit {type(model).__name__} "
                              f"({len(expected)} tensors; the file has {len(state)}): " + "; ".join(problems) + hint)


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


def load_checkpoint(model: nn.Module, path, *, ema: bool = False) -> nn.Module:
    """Load an official-format checkpoint (or plain state dict) into ``model``, strictly."""
    ckpt = read_checkpoint(path)
    state = extract_state_dict(ckpt, path, ema=ema)
    check_state_dict(model, state, path, arch=recorded_setup(ckpt)["model"])
    model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(path, model: nn.Module, **extra) -> None:
    """Write ``{'model': state_dict, **extra}`` atomically (official layout)."""
    save_torch(path, {"model": model.state_dict(), **extra})
