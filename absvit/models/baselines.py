"""Plain timm ViTs at the embedded-default sizes, the baselines matching ``absvit_*_patch8_64``.

The paper-size baselines are timm's own ``vit_{tiny,small,base}_patch16_224``.
"""
from timm.models import build_model_with_cfg, register_model
from timm.models._registry import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer

from absvit.models.absvit import _args, _cfg

default_cfgs = generate_default_cfgs({
    "vit_pico_patch8_64": _cfg(input_size=(3, 64, 64), num_classes=10, crop_pct=1.0),
    "vit_nano_patch8_64": _cfg(input_size=(3, 64, 64), num_classes=10, crop_pct=1.0),
})


def _create_vit(variant: str, pretrained: bool, model_args: dict, **kwargs) -> VisionTransformer:
    return build_model_with_cfg(VisionTransformer, variant, pretrained, **dict(model_args, **kwargs))


@register_model
def vit_pico_patch8_64(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _create_vit("vit_pico_patch8_64", pretrained, _args(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3, num_classes=10), **kwargs)


@register_model
def vit_nano_patch8_64(pretrained: bool = False, **kwargs) -> VisionTransformer:
    return _create_vit("vit_nano_patch8_64", pretrained, _args(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3, num_classes=10), **kwargs)
