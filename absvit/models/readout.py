"""What the appendix figures read out of a plain timm ViT (AbSViT has its own methods for both).

``vit_attention_map`` is the map of the attention pictures (``AbSViT.attention_map``), and
``vit_first_layer_input`` the first block's layer-normed input, x0_bu of Fig. 4
(``AbSViT.first_layer_inputs``). Both use only timm's public ``forward_intermediates``, so they work
for any timm ViT; on an AbSViT they give its pass-2 values with the learned prompt as the prior.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["vit_attention_map", "vit_first_layer_input"]


@torch.no_grad()
def vit_attention_map(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-patch L2 norm of the tokens after the first ``depth - 3`` blocks, shape (B, H, W)."""
    feats = vit.forward_intermediates(x, indices=[len(vit.blocks) - 4], stop_early=True, intermediates_only=True)
    return feats[0].norm(dim=1)


@torch.no_grad()
def vit_first_layer_input(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The first block's layer-normed input (B, N, D), prefix tokens included: what its attention reads.

    Caught as the output of ``blocks[0].norm1`` while ``forward_intermediates`` runs block 0 alone."""
    seen: list[torch.Tensor] = []
    hook = vit.blocks[0].norm1.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        vit.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
    finally:
        hook.remove()
    return seen[0]
