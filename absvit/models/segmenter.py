"""Segmentation models: a backbone's feature maps -> UperNet (+ FCN auxiliary head).

Backbones:
    vit / absvit  timm (AbS)ViT; maps after blocks 3, 6, 9, 12 of 12 (evenly spaced for other
                  depths), class token dropped, the last tap after the final LayerNorm; for
                  AbSViT these are pass-2 features (prior mask + feedback). The position
                  embedding is resampled bicubically to each input's grid.
    resnet        timm ResNet stages 1-4 (strides 4-32).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from absvit.checkpoint import extract_state_dict, read_checkpoint
from absvit.errors import CheckpointError
from absvit.models.registry import feature_taps as vit_taps
from absvit.models.resize import resize_bilinear
from absvit.models.upernet import FCNHead, UperNetHead
from absvit.models.weights import check_state_dict

BACKBONES = ("vit", "absvit", "resnet")
# layers whose parameters get no weight decay (MMSegmentation's ViT configs)
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class ViTFeatures(nn.Module):
    """The model's ``forward_intermediates`` maps at ``vit_taps`` (for AbSViT pass 2), the last one normed."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.taps = vit_taps(len(vit.blocks))
        self.channels = [vit.embed_dim] * 4
        self.size_divisor = vit.patch_embed.patch_size[0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        *maps, last = self.vit.forward_intermediates(x, self.taps, intermediates_only=True)
        return [*maps, self.vit.norm(last.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)]


class ResNetFeatures(nn.Module):
    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.resnet = resnet
        self.channels = resnet.feature_info.channels()
        self.size_divisor = 32

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.resnet(x)


class Segmenter(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, *, channels: int = 512, aux_channels: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.decode_head = UperNetHead(backbone.channels, num_classes, channels, dropout)
        self.auxiliary_head = FCNHead(backbone.channels[-1], num_classes, aux_channels, dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits at the input's size, and the auxiliary head's (training only).

        Upsampled bilinearly as matmuls (``resize_bilinear``): F.interpolate's values, but a backward
        without atomic adds, which made up most of a UperNet step's GPU time."""
        feats = self.backbone(x)
        logits = resize_bilinear(self.decode_head(feats), x.shape[-2:])
        aux = None
        if self.training:
            aux = resize_bilinear(self.auxiliary_head(feats[-1]), x.shape[-2:])
        return logits, aux

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups as in MMSegmentation's ViT configs: no weight decay on norm layers nor on what a
        submodule's own ``no_weight_decay()`` names (timm's ViT: pos_embed, cls_token; AbSViT adds prompt)."""
        no_decay = {id(p) for m in self.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
        for m in self.modules():
            if callable(getattr(m, "no_weight_decay", None)):
                names = m.no_weight_decay()
                no_decay |= {id(p) for name, p in m.named_parameters() if name in names}
        trained = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in trained if id(p) not in no_decay], "weight_decay": weight_decay},
                {"params": [p for p in trained if id(p) in no_decay], "weight_decay": 0.0}]

    @torch.no_grad()
    def predict(self, image: torch.Tensor, out_size) -> torch.Tensor:
        """Whole-image inference: pad to the backbone's stride, crop back, resize to ``out_size``."""
        h, w = image.shape[-2:]
        d = self.backbone.size_divisor
        padded = F.pad(image, (0, (-w) % d, 0, (-h) % d))
        logits = self(padded)[0][..., :h, :w]
        return resize_bilinear(logits, out_size)


def _vit_state(model: nn.Module, checkpoint, ema: bool) -> dict:
    """A pretraining / released classification checkpoint, without its classifier, fitted to ``model``."""
    state = extract_state_dict(read_checkpoint(checkpoint), checkpoint, ema=ema)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    ours = model.state_dict()
    pos = state.get("pos_embed")
    if pos is not None and "pos_embed" in ours and pos.shape != ours["pos_embed"].shape:
        prefix = model.num_prefix_tokens
        old = int((pos.shape[1] - prefix) ** 0.5)
        state["pos_embed"] = resample_abs_pos_embed(pos, new_size=model.patch_embed.grid_size, old_size=(old, old),
                                                    num_prefix_tokens=prefix)
    return state


def _resnet_state(features: nn.Module, path, model_name: str) -> dict:
    """timm ImageNet weights (a .safetensors or .pth state dict) without the classifier, checked strictly.

    (timm's own pretrained loading is not strict for feature models: a wrong file would load nothing, silently.)"""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (expected timm ImageNet weights for {model_name})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = extract_state_dict(read_checkpoint(path), path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        check_state_dict(features, state, path)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (not {model_name} weights?)") from None
    return state


def build_backbone(kind: str, model_name: str, *, checkpoint=None, ema: bool = False, drop_path: float = 0.1) -> nn.Module:
    if kind not in BACKBONES:
        raise ValueError(f"unknown backbone kind {kind!r}; expected one of {BACKBONES}")
    if kind == "resnet":
        resnet = timm.create_model(model_name, features_only=True, out_indices=(1, 2, 3, 4))
        if checkpoint:
            resnet.load_state_dict(_resnet_state(resnet, checkpoint, model_name))
        else:
            warnings.warn(f"{model_name}: no ImageNet weights configured; the segmentation backbone starts from RANDOM "
                          "init and its numbers are not comparable to the paper's", stacklevel=2)
        return ResNetFeatures(resnet)

    is_absvit = model_name.startswith("absvit_")
    if is_absvit != (kind == "absvit"):
        raise ValueError(f"backbone kind {kind!r} does not match model {model_name!r}")
    vit = timm.create_model(model_name, num_classes=0, dynamic_img_size=True, drop_path_rate=drop_path)
    if checkpoint:
        state = _vit_state(vit, checkpoint, ema)
        try:
            check_state_dict(vit, state, checkpoint)
        except CheckpointError as e:
            raise CheckpointError(f"{e} (is it a {model_name} checkpoint? a {kind} backbone needs one)") from None
        vit.load_state_dict(state)
    else:
        warnings.warn(f"{model_name}: no pretraining checkpoint given; the backbone starts from random init", stacklevel=2)
    return ViTFeatures(vit)
