"""METER's co-attention fusion on the two encoders (Dou et al., "An Empirical Study of Training End-to-End
Vision-and-Language Transformers", CVPR 2022), as the AbSViT V&L code uses it.

Each modality has its own stack of BERT-style (post-norm) layers: self-attention, cross-attention to the
other modality, feed-forward. Layer ``i`` of either stack reads the other stack's input to layer ``i``. The
parameter names keep METER's (``cross_modal_*``, ``token_type_embeddings``), which the optimiser's groups
match on.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from absvit.vl.encoders import TextEncoder, VisualEncoder

__all__ = ["CoAttentionLayer", "METER", "Pooler", "init_meter_weights"]

LAYER_NORM_EPS = 1e-12  # BERT's


def init_meter_weights(module: nn.Module) -> None:
    """METER's init for the parts it adds: normal(0, 0.02) weights and zero biases for linear maps (the
    attentions' packed input projections included) and embeddings; LayerNorm 1 / 0. Use with ``.apply``."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.MultiheadAttention):
        nn.init.normal_(module.in_proj_weight, std=0.02)
        nn.init.zeros_(module.in_proj_bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class CoAttentionLayer(nn.Module):
    """One METER layer of one modality (BERT's post-norm ``BertCrossLayer``): self-attention -> add & norm ->
    cross-attention to the other modality -> add & norm -> FFN (GELU) -> add & norm; dropout on each
    sub-layer's output and on the attention weights."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.self_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.cross_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.cross_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.ffn = nn.Sequential(nn.Linear(hidden, int(hidden * mlp_ratio)), nn.GELU(),
                                 nn.Linear(int(hidden * mlp_ratio), hidden))
        self.ffn_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, other: torch.Tensor, padding: torch.Tensor | None = None,
                other_padding: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, N, hidden) attending to itself and to ``other`` (B, M, hidden); the paddings are
        (B, N) / (B, M) booleans, True where a token is padding (None: no padding)."""
        h = self.self_attn(x, x, x, key_padding_mask=padding, need_weights=False)[0]
        x = self.self_norm(x + self.dropout(h))
        h = self.cross_attn(x, other, other, key_padding_mask=other_padding, need_weights=False)[0]
        x = self.cross_norm(x + self.dropout(h))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class Pooler(nn.Module):
    """The first token -> Linear -> Tanh (BERT's pooler)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class METER(nn.Module):
    """The V&L model: visual and text encoders, METER's co-attention fusion, and both modalities' poolers.

    ``forward`` returns a dict: ``cls_feats`` (B, 2 * hidden), the pooled text and image features, which the
    task heads read; ``var_loss``, the visual encoder's L_var (0 without the top-down path); ``image_cls``, the
    visual encoder's (pass-2) class token; ``prior``, the text prior projected by ``prompt_decoder`` from a
    detached text prior (what the CLIP prior loss aligns with ``image_cls``, as the official code), None
    without the top-down path.
    """

    def __init__(self, visual: VisualEncoder, text: TextEncoder, *, hidden: int = 768, heads: int = 12,
                 layers: int = 6, mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        self.visual = visual
        self.text = text
        self.cross_modal_text_transform = nn.Linear(text.hidden_size, hidden)
        self.cross_modal_image_transform = nn.Linear(visual.embed_dim, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)  # text 0, image 1
        self.cross_modal_text_layers = nn.ModuleList(
            [CoAttentionLayer(hidden, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.cross_modal_image_layers = nn.ModuleList(
            [CoAttentionLayer(hidden, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.cross_modal_text_pooler = Pooler(hidden)
        self.cross_modal_image_pooler = Pooler(hidden)
        for name, module in self.named_children():
            if name not in ("visual", "text"):  # the encoders keep their pretrained (or timm's) weights
                module.apply(init_meter_weights)

    def text_prior(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prior_kind: str) -> torch.Tensor:
        """The text prior (B, text hidden) of ``TextEncoder.prior``."""
        return self.text.prior(self.text(input_ids, attention_mask), input_ids, prior_kind)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prior_kind: str) -> dict:
        """Images (B, 3, H, W) with their texts (B, L) and attention masks (B, L: 1 text, 0 padding);
        ``prior_kind``: ``TextEncoder.prior``'s ``"mean"`` (VQA) or ``"eos"`` (retrieval)."""
        text_tokens = self.text(input_ids, attention_mask)
        text_prior = self.text.prior(text_tokens, input_ids, prior_kind)
        top_down = self.visual.top_down
        image_tokens, var_loss = self.visual(images, text_prior if top_down else None)

        x = self.cross_modal_text_transform(text_tokens) + self.token_type_embeddings.weight[0]
        y = self.cross_modal_image_transform(image_tokens) + self.token_type_embeddings.weight[1]
        text_padding = attention_mask == 0
        for text_layer, image_layer in zip(self.cross_modal_text_layers, self.cross_modal_image_layers):
            x, y = text_layer(x, y, text_padding, None), image_layer(y, x, None, text_padding)
        return {
            "cls_feats": torch.cat([self.cross_modal_text_pooler(x), self.cross_modal_image_pooler(y)], dim=-1),
            "var_loss": var_loss,
            "image_cls": image_tokens[:, 0],
            "prior": self.visual.project_prior(text_prior.detach()) if top_down else None,
        }

    MAPS = ("class attention", "token norm")

    @torch.no_grad()
    def attention_map(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      prior_kind: str, *, top_down: bool = True, kind: str = "class attention") -> torch.Tensor:
        """The visual encoder's attention map (B, H, W) with these texts' prior: ``kind`` "class attention" (the
        official V&L demo's, ``VisualEncoder.class_attention_map``) or "token norm" (the classification figures',
        ``VisualEncoder.attention_map``)."""
        if kind not in self.MAPS:
            raise ValueError(f"unknown attention map {kind!r}; expected one of {self.MAPS}")
        prior = self.text_prior(input_ids, attention_mask, prior_kind) if top_down and self.visual.top_down else None
        read = self.visual.class_attention_map if kind == "class attention" else self.visual.attention_map
        return read(images, prior, top_down=top_down)
