"""AbSViT: a timm Vision Transformer with top-down feedback.

A PyTorch implementation of `Top-Down Visual Attention from Analysis by Synthesis`
(Baifeng Shi, Trevor Darrell, Xin Wang; CVPR 2023), https://arxiv.org/abs/2303.13043.
Official code: https://github.com/bfshi/AbSViT (its checkpoints load here; no code is shared).

The model runs the ViT twice. Pass 1 is an ordinary bottom-up forward. Its output tokens
are weighted by their cosine similarity to a prior (a learned ``prompt``, or any vector such
as a class's head row), fed top-down through one linear decoder per layer, and each layer's
decoded signal is added to the attention *values* of pass 2. Pass 2's logits are the
model's output. ``L_var`` trains each decoder's first map to reconstruct a block's input
from its output.

Everything that is plain ViT (patch embedding, position embedding, blocks, norms, head,
init, state-dict keys) is timm's own; this file adds only the feedback path. Dense features
(``forward_intermediates``, ``features_only=True``) are pass-2 features.

Like timm's ViTs, the model scripts (``torch.jit.script``) and traces with FX (timm's
``get_notrace_functions()`` as the tracer's leaves: the prior's and alpha's defaults are resolved
in ``prior_vector`` and ``feedback_scale``, which FX records as calls).
"""
from typing import List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Attention, register_notrace_function
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block, VisionTransformer, init_weights_vit_timm
from torch.utils.checkpoint import checkpoint

from absvit.models.readout import map_depth
from absvit.models.registry import build_model, embedded_cfg, released_cfg
from absvit.models.weights import load_checkpoint

__all__ = ["AbSViT", "AbSViTOutput", "FeedbackDecoder", "TopDownAttention", "TopDownBlock", "create_absvit",
           "feedback_scale", "prior_vector"]

# A prior is None (the learned prompt), a class index / index tensor (that class's head
# row), or a float vector of shape (D,) or (B, D).
Prior = Optional[Union[int, torch.Tensor]]


class TopDownAttention(Attention):
    """timm's attention, with an optional top-down signal added to the values.

    ``v = W_v x + b_v + (W_v td + b_v)``: the top-down signal goes through the block's own
    value projection, bias included (so the bias enters twice). Computed as one matmul,
    ``W_v (x + td) + 2 b_v``, which costs nothing over a plain ViT.
    """

    def forward(self, x: torch.Tensor, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, _ = x.shape
        if td is None:
            q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            w = self.qkv.weight.split([2 * self.attn_dim, self.attn_dim])
            bias = self.qkv.bias
            b_qk, b_v = (None, None) if bias is None else (bias[:2 * self.attn_dim], 2 * bias[2 * self.attn_dim:])
            qk = F.linear(x, w[0], b_qk).reshape(B, N, 2, self.num_heads, self.head_dim)
            q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)
            v = F.linear(x + td, w[1], b_v).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        return self.proj_drop(self.proj(x))


class TopDownBlock(Block):
    """timm's pre-norm block; the top-down signal (not layer-normed) reaches the attention."""

    def forward(self, x: torch.Tensor, td: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), td)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class FeedbackDecoder(nn.Module):
    """One layer's decoder: ``linear`` carries the signal down, ``linear2`` reads it out.

    ``AbSViT.feedback`` runs the decoders, from the top layer down."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        self.linear2 = nn.Linear(dim, dim, bias=False)


def _class_rows(head_weight: Optional[torch.Tensor]) -> torch.Tensor:
    if head_weight is None:
        raise ValueError("a class index is a prior only for a model with a classifier head; give a vector")
    return head_weight


@register_notrace_function  # FX leaf: it branches on the prior's kind, which a traced argument hides
def prior_vector(prior: Prior, prompt: torch.Tensor, head_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """The prior as a float tensor of shape (D,) or (B, D): ``prompt`` for None, the rows of
    ``head_weight`` for a class index or index tensor, a float vector as it is."""
    if prior is None:
        return prompt
    if isinstance(prior, int):  # (TorchScript indexes by an int or by a tensor, not by their Union)
        return _class_rows(head_weight)[prior]
    if not prior.is_floating_point():
        return _class_rows(head_weight)[prior]
    if prior.shape[-1] != prompt.shape[-1] or prior.dim() not in [1, 2]:
        raise ValueError(f"prior must have shape ({prompt.shape[-1]},) or (B, {prompt.shape[-1]}), "
                         f"got shape {list(prior.shape)}")
    return prior


@register_notrace_function  # FX leaf: a traced ``alpha`` is never None at trace time
def feedback_scale(alpha: Optional[float], default: float) -> float:
    """``alpha`` if given, else the model's ``default``."""
    return default if alpha is None else alpha


class AbSViTOutput(NamedTuple):
    logits_bottom_up: torch.Tensor  # pass 1 (no feedback)
    logits: torch.Tensor  # pass 2 (top-down modulated): the model's prediction
    var_loss: torch.Tensor  # unweighted L_var, summed over layers


class AbSViT(VisionTransformer):
    """timm ``VisionTransformer`` plus a prior, per-layer feedback decoders and a second pass.

    ``model(x)`` returns pass-2 logits; ``model.forward_train(x)`` returns both passes'
    logits and ``L_var``; ``prior`` / ``alpha`` may be given per call. ``alpha`` scales the
    prior-masked tokens fed back (the paper's and the official code's name; default 1).
    """

    def __init__(self, *, alpha: float = 1.0, weight_init: str = "", **kwargs):
        super().__init__(block_fn=TopDownBlock, attn_layer=TopDownAttention, weight_init=weight_init, **kwargs)
        self.alpha = float(alpha)
        self.decoders = nn.ModuleList([FeedbackDecoder(self.embed_dim) for _ in self.blocks])
        self.prompt = nn.Parameter(torch.randn(self.embed_dim))
        if weight_init != "skip":
            self.decoders.apply(init_weights_vit_timm)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"prompt"}

    # -- pieces -------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pos_embed(self.patch_embed(x))
        return self.norm_pre(self.patch_drop(x))

    def run_blocks(self, x: torch.Tensor, tds: Optional[List[torch.Tensor]] = None, record: bool = False,
                   depth: Optional[int] = None) -> Tuple[torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]]]:
        """Blocks ``[:depth]``, block ``i`` given ``tds[i]``; returns the tokens and, with ``record``,
        each block's (input, output)."""
        trace: List[Tuple[torch.Tensor, torch.Tensor]] = []
        for i, blk in enumerate(self.blocks):
            if depth is None or i < depth:
                td = None if tds is None else tds[i]
                x_in = x
                if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                    x = checkpoint(blk, x, td, use_reentrant=False)
                else:
                    x = blk(x, td)
                if record:
                    trace.append((x_in, x))
        return x, trace

    def head_weight(self) -> Optional[torch.Tensor]:
        """The classifier's rows (a class index's prior); None without a head."""
        if hasattr(self.head, "weight"):
            return self.head.weight
        return None

    def resolve_prior(self, prior: Prior) -> torch.Tensor:
        """The prior as a float tensor of shape (D,) or (B, D)."""
        return prior_vector(prior, self.prompt, self.head_weight())

    def prior_mask(self, tokens: torch.Tensor, prior: Prior = None) -> torch.Tensor:
        """Per-token weight ``clamp(cos(token, prior), 0, 1)``, shape (B, N, 1)."""
        p = F.normalize(self.resolve_prior(prior), dim=-1)
        # (B, N, D) @ (D, 1) or @ (B, D, 1): a (D,) and a (B, D) prior alike, without a branch
        return (F.normalize(tokens, dim=-1) @ p.unsqueeze(-1)).clamp(0, 1)

    def feedback(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Top-down signals, indexed by block: from the top layer down, ``x = linear_l(x)``, ``td_l = linear2_l(x)``."""
        # the decoders' weights, not the modules: TorchScript walks a ModuleList first to last only
        maps: List[Tuple[torch.Tensor, torch.Tensor]] = []
        for decoder in self.decoders:
            maps.append((decoder.linear.weight, decoder.linear2.weight))
        tds: List[torch.Tensor] = []
        for down, out in maps[::-1]:
            x = F.linear(x, down)
            tds.append(F.linear(x, out))
        return tds[::-1]

    def top_down(self, tokens: torch.Tensor, prior: Prior = None, alpha: Optional[float] = None) -> List[torch.Tensor]:
        """The top-down signals from pass-1 output ``tokens``: masked by the prior, scaled by alpha, decoded."""
        return self.feedback(tokens * self.prior_mask(tokens, prior) * feedback_scale(alpha, self.alpha))

    def pass_one(self, x0: torch.Tensor, prior: Prior = None,
                 alpha: Optional[float] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Pass 1 from the embedded tokens ``x0``: its normed output tokens and the top-down signals they give."""
        tokens = self.norm(self.run_blocks(x0)[0])
        return tokens, self.top_down(tokens, prior, alpha)

    def variational_loss(self, trace: List[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """L_var = sum_l mse(linear_l(sg(out_l)), sg(in_l)); only ``linear`` gets gradient."""
        return sum(F.mse_loss(dec.linear(out.detach()), inp.detach()) for dec, (inp, out) in zip(self.decoders, trace))

    # -- forward forms -----------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, prior: Prior = None, alpha: Optional[float] = None) -> torch.Tensor:
        """Pass-2 tokens after the final norm."""
        x0 = self.embed(x)
        return self.norm(self.run_blocks(x0, self.pass_one(x0, prior, alpha)[1])[0])

    def forward(self, x: torch.Tensor, prior: Prior = None, alpha: Optional[float] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, prior, alpha))

    def forward_train(self, x: torch.Tensor, prior: Prior = None, alpha: Optional[float] = None) -> AbSViTOutput:
        x0 = self.embed(x)
        bottom_up, tds = self.pass_one(x0, prior, alpha)
        tokens, trace = self.run_blocks(x0, tds, record=True)
        return AbSViTOutput(self.forward_head(bottom_up), self.forward_head(self.norm(tokens)),
                            self.variational_loss(trace))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, list[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
            output_dict: bool = False,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
            *,
            prior: Prior = None,
            alpha: Optional[float] = None,
    ):
        """timm's ``VisionTransformer.forward_intermediates`` (same arguments and returns) on pass 2.

        The intermediates are pass-2 block outputs and the final features pass 2's normed tokens:
        what dense heads need, the tokens after the prior mask and the feedback have steered the
        attention (timm's ViT method, called on this model, gives pass-1 features). Pass 1 runs
        through every block whatever ``indices`` are; ``stop_early`` ends pass 2 after the last
        block taken. Attention masks are refused: the feedback is defined for full attention.
        """
        if attn_mask is not None or is_causal:
            raise NotImplementedError("AbSViT takes no attention mask or causal attention")
        assert output_fmt in ("NCHW", "NLC"), "Output format must be one of NCHW or NLC."
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        x0 = self.embed(x)
        tds = self.pass_one(x0, prior, alpha)[1]
        x, trace = self.run_blocks(x0, tds, record=True, depth=max_index + 1 if stop_early else None)
        intermediates = [self.norm(out) if norm else out for i, (_, out) in enumerate(trace) if i in take_indices]

        prefix_tokens = None
        if self.num_prefix_tokens:
            prefix_tokens = [y[:, :self.num_prefix_tokens] for y in intermediates]
            intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if output_fmt == "NCHW":
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]

        if output_dict:
            out = {"image_intermediates": intermediates}
            if prefix_tokens is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix_tokens
            if not intermediates_only:
                out["image_features"] = self.norm(x)
            return out
        if return_prefix_tokens and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens))
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def prune_intermediate_layers(self, indices: Union[int, list[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's pruning for feature extraction, as far as the feedback allows: only the head goes.

        Every block, every decoder and the final norm stay, whatever ``indices`` and ``prune_norm``:
        pass 1 runs the whole depth, its normed output feeds the decoders, and every decoder's signal
        reaches pass 2, so any block's features depend on all of them. Without the head a class
        index is no prior any more (a vector or the learned prompt still is). Returns the absolute
        ``indices`` (all still valid).
        """
        take_indices, _ = feature_take_indices(len(self.blocks), indices)
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return take_indices

    @torch.no_grad()
    def attention_map(self, x: torch.Tensor, prior: Prior = None, alpha: Optional[float] = None, *,
                      top_down: bool = True) -> torch.Tensor:
        """Per-patch L2 norm of the tokens after the first ``map_depth`` blocks (9 of 12), shape (B, H, W).

        ``top_down=False`` gives the bottom-up map (no feedback). Otherwise the feedback uses
        ``prior`` (a class index means that class's head row; None the learned prompt).
        """
        depth = map_depth(len(self.blocks))
        x0 = self.embed(x)
        tds = self.pass_one(x0, prior, alpha)[1] if top_down else None
        tokens = self.run_blocks(x0, tds, depth=depth)[0][:, self.num_prefix_tokens:]
        return tokens.norm(dim=-1).reshape(x.shape[0], *self.patch_embed.grid_size)

    @torch.no_grad()
    def first_layer_inputs(self, x: torch.Tensor, prior: Prior = None, alpha: Optional[float] = None, *,
                           top_down: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(x0_bu, x0_td)``, each (B, N, D): what block 0's attention values receive (appendix Fig. 4).

        x0_bu is the first block's layer-normed input, x0_td the top-down signal pass 2 adds to it
        (``v = W_v (x0_bu + x0_td) + 2 b_v``), so ``x0_bu + x0_td`` is what the values see. x0_td is
        None with ``top_down=False`` (pass 1 is then not run)."""
        x0 = self.embed(x)
        td = self.pass_one(x0, prior, alpha)[1][0] if top_down else None
        return self.blocks[0].norm1(x0), td

    def load_checkpoint(self, path, *, ema: bool = False) -> "AbSViT":
        return load_checkpoint(self, path, ema=ema)


# -- registered variants --------------------------------------------------------------

default_cfgs = generate_default_cfgs({
    "absvit_tiny_patch16_224.in1k": released_cfg("absvit_tiny_patch16_224"),
    "absvit_small_patch16_224.in1k": released_cfg("absvit_small_patch16_224"),
    "absvit_base_patch16_224.in1k": released_cfg("absvit_base_patch16_224"),
    "absvit_tiny_patch8_224_gap.in1k": released_cfg("absvit_tiny_patch8_224_gap"),
    "absvit_pico_patch8_64": embedded_cfg(),
    "absvit_pico_patch8_64_gap": embedded_cfg(),
    "absvit_nano_patch8_64": embedded_cfg(),
})


def create_absvit(variant: str, pretrained: bool = False, **kwargs) -> AbSViT:
    """The AbSViT family's factory (timm's ``_create_vision_transformer`` for this family).

    The official models are DeiT ViTs: qkv bias, MLP ratio 4, LayerNorm eps 1e-6 (timm's defaults)."""
    return build_model(AbSViT, variant, pretrained, **kwargs)


@register_model
def absvit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> AbSViT:
    """AbSViT-Ti/16 (DeiT-Ti with top-down feedback), ImageNet-1k release."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return create_absvit("absvit_tiny_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def absvit_small_patch16_224(pretrained: bool = False, **kwargs) -> AbSViT:
    """AbSViT-S/16 (DeiT-S with top-down feedback), ImageNet-1k release."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return create_absvit("absvit_small_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def absvit_base_patch16_224(pretrained: bool = False, **kwargs) -> AbSViT:
    """AbSViT-B/16 (DeiT-B with top-down feedback), ImageNet-1k release."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return create_absvit("absvit_base_patch16_224", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def absvit_tiny_patch8_224_gap(pretrained: bool = False, **kwargs) -> AbSViT:
    """AbSViT-Ti/8 with global average pooling, ImageNet-1k release (the attention pictures' model)."""
    model_args = dict(patch_size=8, embed_dim=192, depth=12, num_heads=3, global_pool="avg")
    return create_absvit("absvit_tiny_patch8_224_gap", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def absvit_pico_patch8_64(pretrained: bool = False, **kwargs) -> AbSViT:
    """AbSViT at the embedded default size: 64 px, patch 8, 96 dim, 4 blocks, 10 classes."""
    model_args = dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3, num_classes=10)
    return create_absvit("absvit_pico_patch8_64", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def absvit_pico_patch8_64_gap(pretrained: bool = False, **kwargs) -> AbSViT:
    """``absvit_pico_patch8_64`` with global average pooling, as the demo's ``absvit_tiny_patch8_224_gap``: the
    embedded default's attention pictures."""
    model_args = dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=3, num_classes=10, global_pool="avg")
    return create_absvit("absvit_pico_patch8_64_gap", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def absvit_nano_patch8_64(pretrained: bool = False, **kwargs) -> AbSViT:
    """AbSViT at the embedded default size: 64 px, patch 8, 192 dim, 6 blocks, 10 classes."""
    model_args = dict(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3, num_classes=10)
    return create_absvit("absvit_nano_patch8_64", pretrained=pretrained, **dict(model_args, **kwargs))
