"""Initialisations a pretraining recipe may choose besides timm's (``PretrainRecipe.init``, ``.pos_embed``), for any
timm ViT (AbSViT included):

- ``mimetic_init_``: mimetic initialisation of self-attention (Trockman & Kolter, "Mimetic Initialization of
  Self-Attention Layers", ICML 2023). In their convention (``q = x W_q``), per block and head
  ``W_q W_k^T = 0.7 Z1 + 0.7 I`` and per block ``W_v W_proj = 0.4 Z2 - 0.4 I``, ``Z ~ N(0, 1/d)``, each product
  split into its two factors by an SVD (the query-key product of a head has the rank of the head's width: its best
  approximation of that rank), the biases zero. A small ViT trained for minutes from timm's init keeps a uniform
  attention; from this one it attends locally from the start.
- ``sincos_pos_embed_``: MAE's fixed 2-D sin-cos position embedding (timm's ``build_sincos2d_pos_embed``; zero for
  the class token), not trained.

The embedded preset uses both (README "The embedded default"); the paper preset keeps timm's, the official init.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import build_sincos2d_pos_embed

__all__ = ["INITS", "POS_EMBEDS", "mimetic_init_", "mimetic_targets", "sincos_pos_embed_"]

INITS = ("timm", "mimetic")
POS_EMBEDS = ("learned", "sincos")
QK = (0.7, 0.7)  # W_q W_k^T = a Z + b I
VO = (0.4, -0.4)  # W_v W_proj = a Z + b I


def mimetic_targets(dim: int, heads: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One block's targets in Trockman & Kolter's convention: ((heads, dim, dim) query-key products, (dim, dim)
    value-projection product), ``Z ~ N(0, 1/dim)`` drawn from ``generator``."""
    eye = torch.eye(dim)
    z_qk = torch.randn(heads, dim, dim, generator=generator) / dim ** 0.5
    z_vo = torch.randn(dim, dim, generator=generator) / dim ** 0.5
    return QK[0] * z_qk + QK[1] * eye, VO[0] * z_vo + VO[1] * eye


def split(product: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A @ B.T`` the best rank-``rank`` approximation of ``product`` (its truncated SVD, the singular
    values shared between the factors): A, B of shape (dim, rank)."""
    u, s, vh = torch.linalg.svd(product)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, vh[:rank].T * root


@torch.no_grad()
def mimetic_init_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Mimetic initialisation of every block's attention (module docstring), in place. In PyTorch's ``Linear``
    (``y = x W^T``) their ``W_q`` of head h is ``qkv.weight``'s rows of the head's queries, transposed; likewise
    ``W_k``, and ``W_v W_proj = (proj.weight @ v.weight)^T``."""
    for block in model.blocks:
        attn = block.attn
        qkv, proj, heads = attn.qkv, attn.proj, attn.num_heads
        dim, width = qkv.in_features, attn.head_dim
        qk, vo = mimetic_targets(dim, heads, generator)
        for h in range(heads):
            w_q, w_k = split(qk[h], width)
            rows = slice(h * width, (h + 1) * width)
            qkv.weight[rows] = w_q.T
            qkv.weight[dim:][rows] = w_k.T
        a, b = split(vo, dim)  # full rank: W_v W_proj = vo exactly
        qkv.weight[2 * dim:] = a.T
        proj.weight.copy_(b)
        for bias in (qkv.bias, proj.bias):
            if bias is not None:
                bias.zero_()
    return model


@torch.no_grad()
def sincos_pos_embed_(model: nn.Module) -> nn.Module:
    """MAE's fixed 2-D sin-cos position embedding on the model's patch grid (zero for its prefix tokens), frozen."""
    grid = model.patch_embed.grid_size
    table = build_sincos2d_pos_embed(list(grid), dim=model.pos_embed.shape[-1])
    prefix = model.pos_embed.shape[1] - table.shape[0]
    model.pos_embed[0, :prefix] = 0
    model.pos_embed[0, prefix:] = table
    model.pos_embed.requires_grad_(False)
    return model
