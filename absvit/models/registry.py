"""What this project's two model families share: their pretrained cfgs, the builder, the feature taps.

Each family keeps one public factory, as timm does (``absvit.models.absvit.create_absvit``,
``absvit.models.baselines.create_vit``); both build through ``build_model`` here, which loads the
official release files through ``official_weights``.
"""
from __future__ import annotations


import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg

from absvit.checkpoint import SAFE_GLOBALS, extract_state_dict, read_checkpoint
from absvit.models.weights import check_state_dict
from absvit.released import RELEASED

__all__ = ["PAPER", "build_model", "embedded_cfg", "feature_taps", "model_cfg", "official_weights",
           "released_cfg"]

PAPER = "Top-Down Visual Attention from Analysis by Synthesis"


def model_cfg(input_size=(3, 224, 224), **kwargs) -> dict:
    """A pretrained cfg with DeiT's evaluation: ImageNet mean/std, bicubic resize, 0.875 centre crop.

    ``fixed_input_size``: the position embedding has the size of ``input_size``'s grid (as in every
    timm ViT cfg), so timm's tooling feeds the model that size (a model built with
    ``dynamic_img_size=True`` still takes any size)."""
    return {
        "num_classes": 1000, "input_size": input_size, "pool_size": None, "crop_pct": 0.875,
        "interpolation": "bicubic", "fixed_input_size": True, "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.proj", "classifier": "head", **kwargs,
    }


def released_cfg(model: str, **kwargs) -> dict:
    """cfg of ``model``'s official release file (``absvit.released.RELEASED``); the published ImageNet top-1 /
    ImageNet-C mCE go in ``notes``."""
    release = RELEASED[model]
    notes = (f"published: ImageNet top-1 {release.top1}, ImageNet-C mCE {release.mce}",) if release.top1 else None
    return model_cfg(url=release.url, paper_name=PAPER, notes=notes, **kwargs)


def embedded_cfg() -> dict:
    """cfg of the embedded default sizes (no release): 64 px, 10 classes, the whole image."""
    return model_cfg(input_size=(3, 64, 64), num_classes=10, crop_pct=1.0)


def _adapted_by_timm(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes timm replaces after the filter: a head of another size, a stem for other input channels."""
    cfg = model.pretrained_cfg
    new_head = model.num_classes != cfg["num_classes"]
    new_stem = model.patch_embed.proj.in_channels != cfg["input_size"][0]
    return ((cfg["classifier"] + ".",) if new_head else ()) + ((cfg["first_conv"] + ".weight",) if new_stem else ())


def official_weights(state_dict: dict, model: nn.Module) -> dict:
    """``pretrained_filter_fn`` for the official release files: their ``model`` entry.

    That entry holds the weights the published numbers are from (DeiT's ``--eval`` loads it), not
    ``model_ema``. A DDP ``module.`` prefix is stripped, and names and shapes are checked, so that a
    file for another model fails naming the file. timm passes the whole file for a ``url`` source,
    but for a ``file`` source its loader has already picked ``model_ema`` where there is one: that
    file is read again here.
    """
    cfg = model.pretrained_cfg
    if cfg.get("state_dict") is not None:
        source = "the given state_dict"
    elif cfg.get("file"):
        source = cfg["file"]
        state_dict = read_checkpoint(source)
    else:
        source = cfg.get("url")
    state = extract_state_dict(state_dict, source)
    adapted, own = _adapted_by_timm(model), model.state_dict()
    check_state_dict(model, {**{k: v for k, v in state.items() if not k.startswith(adapted)},
                             **{k: v for k, v in own.items() if k.startswith(adapted)}}, source)
    return state


def feature_taps(depth: int) -> list[int]:
    """Four evenly spaced blocks ending with the last (2, 5, 8, 11 of 12): ``features_only``'s default maps."""
    return [depth * (k + 1) // 4 - 1 for k in range(4)]


def build_model(model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg``, loading released weights through ``official_weights``.

    Official files keep their training arguments in an ``argparse.Namespace``, which timm's
    ``weights_only`` download loader refuses unless it is allowed, as here. ``features_only=True``
    gives ``forward_intermediates`` maps at ``out_indices``, by default ``feature_taps`` (timm's ViTs: last 3).
    """
    out_indices = kwargs.pop("out_indices", feature_taps(kwargs.get("depth", 12)))
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=official_weights,
                                    feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)
