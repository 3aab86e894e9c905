"""Importing this package registers the AbSViT variants and the embedded-size ViTs with timm.

This is the one way the models get registered: ``import absvit`` alone stays light (see its docstring).
"""
import timm

from absvit.errors import UsageError, did_you_mean
from absvit.models import baselines  # noqa: F401  (registers vit_*_patch8_64, vit_tiny_patch8_224_gap)
from absvit.models.absvit import AbSViT, AbSViTOutput, FeedbackDecoder, TopDownAttention, TopDownBlock
from absvit.models.readout import (attention_probs, block_attention, class_token_attention, map_depth, vit_attention_map,
                                   vit_class_attention_map, vit_first_layer_input)

__all__ = ["AbSViT", "AbSViTOutput", "FeedbackDecoder", "TopDownAttention", "TopDownBlock", "attention_probs",
           "block_attention", "class_token_attention", "map_depth", "require_model", "vit_attention_map",
           "vit_class_attention_map", "vit_first_layer_input"]


def require_model(name: str) -> str:
    """``name`` if timm knows it; else a one-line error with the closest registered name."""
    if not timm.is_model(name):
        raise UsageError(f"unknown model {name!r}{did_you_mean(name, timm.list_models())}; "
                         "`python -m absvit models` lists this project's models, timm.list_models() all of timm's")
    return name
