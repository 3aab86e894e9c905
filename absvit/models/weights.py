"""Fitting checkpoint weights to a model: strict name/shape checks that say which model a file is for.

Reading and writing the files is ``absvit.checkpoint``'s (it knows no model); this module knows the
registered models. Importing it imports ``absvit.models`` first (its package), so every candidate of
``likely_models`` is registered by then.
"""
from __future__ import annotations

from collections.abc import Mapping

import timm
import torch
import torch.nn as nn

from absvit.checkpoint import extract_state_dict, read_checkpoint, recorded_setup
from absvit.errors import CheckpointError

__all__ = ["CANDIDATES", "check_state_dict", "likely_models", "load_checkpoint"]

# The models a file is compared against when it does not fit: this project's and the paper's baselines.
CANDIDATES = ("absvit_*", "vit_*_patch8_64", "vit_tiny_patch8_224_gap", "vit_tiny_patch16_224",
              "vit_small_patch16_224", "vit_base_patch16_224")


def _some(keys: list[str], n: int = 5) -> str:
    more = f" ... +{len(keys) - n} more" if len(keys) > n else ""
    return f"{keys[:n]}{more}"


def likely_models(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Registered models whose weights have exactly the names and shapes of ``state`` (position
    embedding and classifier size aside). Built on the meta device: no memory, milliseconds each."""
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


def load_checkpoint(model: nn.Module, path, *, ema: bool = False) -> nn.Module:
    """Load an official-format checkpoint (or plain state dict) into ``model``, strictly."""
    ckpt = read_checkpoint(path)
    state = extract_state_dict(ckpt, path, ema=ema)
    check_state_dict(model, state, path, arch=recorded_setup(ckpt)["model"])
    model.load_state_dict(state, strict=True)
    return model
