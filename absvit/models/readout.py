"""What the appendix figures read out of a plain timm ViT (AbSViT has its own methods for both).

``vit_attention_map`` is the map of the attention pictures (``AbSViT.attention_map``; after ``map_depth`` blocks), and
``vit_first_layer_input`` the first block's layer-normed input, x0_bu of Fig. 4
(``AbSViT.first_layer_inputs``). Both use only timm's public ``forward_intermediates``, so they work
for any timm ViT; on an AbSViT they give its pass-2 values with the learned prompt as the prior.
``class_token_attention`` is the official V&L demo's map (Figure 5): a block's class-token-to-patch attention summed
over heads; ``vit_class_attention_map`` reads it off a plain ViT's last block. ``block_attention`` gives every block's
attention weights of the bottom-up pass (the figures' attention locality).
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["attention_probs", "block_attention", "class_token_attention", "map_depth", "vit_attention_map",
           "vit_class_attention_map", "vit_first_layer_input"]


def map_depth(depth: int) -> int:
    """The blocks an attention picture reads after: 9 of 12 in the official demo, the same share (3 of 4) of a
    smaller model (the embedded default's 4 blocks: 3, not 4 - 3 = 1, which leaves the map to the patch embedding)."""
    return max(1, depth * 3 // 4)


@torch.no_grad()
def vit_attention_map(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-patch L2 norm of the tokens after the first ``map_depth`` blocks, shape (B, H, W)."""
    feats = vit.forward_intermediates(x, indices=[map_depth(len(vit.blocks)) - 1], stop_early=True,
                                      intermediates_only=True)
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


def attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of timm's ``Attention`` ``attn`` on its (layer-normed) input ``x`` (B, N, D): the
    weights, (B, heads, N queries, N keys). The values, where AbSViT's top-down signal enters, play no part."""
    B, N, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return ((attn.q_norm(q) * attn.scale) @ attn.k_norm(k).transpose(-2, -1)).softmax(dim=-1)


def class_token_attention(attn: nn.Module, x: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """The class token's attention on the patch tokens, summed over heads, (B, N - prefix): row 0 of
    ``attention_probs``."""
    if num_prefix_tokens < 1:
        raise ValueError("the class-token attention needs a model with a class token")
    return attention_probs(attn, x)[:, :, 0, num_prefix_tokens:].sum(dim=1)


@torch.no_grad()
def block_attention(vit: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's ``attention_probs`` in the bottom-up pass (a ViT's forward; AbSViT's pass 1, no feedback),
    each (B, heads, N, N): the blocks' layer-normed inputs caught as ``norm1``'s outputs."""
    seen: list[torch.Tensor] = []
    hooks = [b.norm1.register_forward_hook(lambda module, args, out: seen.append(out)) for b in vit.blocks]
    try:
        if hasattr(vit, "run_blocks"):  # AbSViT: pass 1 only
            vit.run_blocks(vit.embed(x))
        else:
            vit.forward_features(x)
    finally:
        for hook in hooks:
            hook.remove()
    return [attention_probs(b.attn, inp) for b, inp in zip(vit.blocks, seen)]


@torch.no_grad()
def vit_class_attention_map(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``class_token_attention`` of a timm ViT's last block on the patch grid, (B, H, W); its input is caught as the
    output of ``blocks[-1].norm1`` while ``forward_features`` runs."""
    last = vit.blocks[-1]
    seen: list[torch.Tensor] = []
    hook = last.norm1.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        vit.forward_features(x)
    finally:
        hook.remove()
    grid = vit.patch_embed.dynamic_feat_size(x.shape[-2:])
    return class_token_attention(last.attn, seen[0], vit.num_prefix_tokens).reshape(x.shape[0], *grid)
