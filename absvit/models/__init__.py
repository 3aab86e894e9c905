"""Importing this package registers the AbSViT variants and the embedded-size ViTs with timm."""
from absvit.models import baselines  # noqa: F401  (registers vit_*_patch8_64)
from absvit.models.absvit import AbSViT, AbSViTOutput, FeedbackDecoder, TopDownAttention, TopDownBlock

__all__ = ["AbSViT", "AbSViTOutput", "FeedbackDecoder", "TopDownAttention", "TopDownBlock"]
