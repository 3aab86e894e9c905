"""Plain timm ViTs this project registers: the embedded-default sizes (the baselines of
``absvit_*_patch8_64``) and the official release's patch-8 ViT-Ti with global average pooling
(the demo's baseline for ``absvit_tiny_patch8_224_gap``).

The paper-size baselines are timm's own ``vit_{tiny,small,base}_patch16_224``; their official
files load with ``absvit.load_checkpoint(model, path)`` (urls in the README). Built like the AbSViT
models (``features_only=True`` gives the same blocks' maps, here of the only pass).
"""
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer

from absvit.models.registry import build_model, embedded_cfg, released_cfg

__all__ = ["create_vit"]

default_cfgs = generate_default_cfgs({
    "vit_tiny_patch8_224_gap.in1k": released_cfg("vit_tiny_patch8_224_gap"),
    "vit_pico_patch8_64": embedded_cfg(),
    "vit_pico_patch8_64_gap": embedded_cfg(),
    "vit_nano_patch8_64": embedded_cfg(),
})


def create_vit(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    """This project's ViT factory: timm's ``VisionTransformer``, official files loaded like AbSViT's."""
    return build_model(VisionTransformer, variant, pretrained, **kwargs)


@register_model
def vit_tiny_patch8_224_gap(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Ti/8 with global average pooling (``fc_norm`` into the head), the official ImageNet-1k release."""
    model_args = dict(patch_size=8, embed_dim=192, depth=12, num_heads=3, global_pool="avg")
    return create_vit("vit_tiny_patch8_224_gap", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vit_pico_patch8_64(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT at the embedded default size (the baseline of ``absvit_pico_patch8_64``)."""
    model_args = dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3, num_classes=10)
    return create_vit("vit_pico_patch8_64", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vit_pico_patch8_64_gap(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """``vit_pico_patch8_64`` with global average pooling (the baseline of ``absvit_pico_patch8_64_gap``)."""
    model_args = dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3, num_classes=10, global_pool="avg")
    return create_vit("vit_pico_patch8_64_gap", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vit_nano_patch8_64(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT at the embedded default size (the baseline of ``absvit_nano_patch8_64``)."""
    model_args = dict(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3, num_classes=10)
    return create_vit("vit_nano_patch8_64", pretrained=pretrained, **dict(model_args, **kwargs))
