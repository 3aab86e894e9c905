"""The V&L model's two encoders: the ImageNet-pretrained (AbS)ViT, steered by the text, and RoBERTa.

``VisualEncoder`` runs AbSViT as the official V&L code does (``meter/modules/absvit.py``): the text prior,
projected to the visual width by ``prompt_decoder``, replaces the learned prompt, and the masked pass-1
tokens are also projected onto it (``x (p p^T) * 5``) before the feedback decoders read them. A plain ViT
gives its ordinary features. ``TextEncoder`` is ``transformers``' ``RobertaModel`` read from a local folder
(``save_pretrained``), with the two text priors of the official code.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from timm.models.vision_transformer import init_weights_vit_timm

from absvit.errors import CheckpointError
from absvit.models import AbSViT, class_token_attention, map_depth, vit_attention_map, vit_class_attention_map

__all__ = ["PRIOR_KINDS", "PROMPT_SCALE", "TextEncoder", "VisualEncoder", "check_text_encoder", "declared", "tokenizer_of"]

PROMPT_SCALE = 5.0  # the official V&L code's fixed scale of the prompt projection
PRIOR_KINDS = ("mean", "eos")  # VQA: mean of all text tokens; retrieval: the </s> token


class VisualEncoder(nn.Module):
    """A timm ViT or AbSViT as the V&L visual encoder: all tokens (class token + patches) after the final norm.

    With an AbSViT and ``feedback`` on, the text prior (B, ``text_dim``) drives the top-down pass: pass 1 ->
    normed tokens x; p = prompt_decoder(prior); x = x * clamp(cos(x, p), 0, 1); x = (x . p) p * 5; the
    feedback decoders turn x into one signal per block; pass 2 adds them to the attention values and its
    normed tokens are the output, with L_var of pass 2 (unweighted, summed over blocks). With ``feedback``
    off an AbSViT gives its pass-1 tokens, and its decoders are frozen (unused). A plain ViT gives
    ``forward_features`` and L_var 0.

    The ViT is changed in place: its classifier is dropped, and an AbSViT's learned ``prompt`` (the text
    prior replaces it) is frozen, so that every trained parameter is used (as DDP requires).
    """

    def __init__(self, vit: nn.Module, *, text_dim: int, feedback: bool = True):
        super().__init__()
        vit.reset_classifier(0)
        self.vit = vit
        self.embed_dim = vit.embed_dim
        self.top_down = isinstance(vit, AbSViT) and feedback
        self.prompt_decoder: nn.Linear | None = None
        if isinstance(vit, AbSViT):
            vit.prompt.requires_grad_(False)
            if self.top_down:
                self.prompt_decoder = nn.Linear(text_dim, self.embed_dim)
                init_weights_vit_timm(self.prompt_decoder)
            else:
                vit.decoders.requires_grad_(False)

    def project_prior(self, prior: torch.Tensor) -> torch.Tensor:
        """The text prior (B, text_dim) in the visual width (B, D): ``prompt_decoder(prior)``."""
        if self.prompt_decoder is None:
            raise ValueError("this visual encoder has no top-down path (a plain ViT, or AbSViT with feedback off)")
        return self.prompt_decoder(prior)

    def top_down_signals(self, x0: torch.Tensor, prior: torch.Tensor) -> list[torch.Tensor]:
        """Each block's top-down signal from the embedded tokens ``x0`` and the text prior (B, text_dim)."""
        vit = self.vit
        x = vit.norm(vit.run_blocks(x0)[0])
        p = self.project_prior(prior)
        x = x * vit.prior_mask(x, p)
        # x @ (p p^T) without the D x D matrix
        x = (x @ p.unsqueeze(-1)) * p.unsqueeze(1) * PROMPT_SCALE
        return vit.feedback(x)

    def forward(self, images: torch.Tensor, prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, N, D) after the final norm, L_var scalar); ``prior`` (B, text_dim) is needed for the
        top-down path and ignored otherwise."""
        vit = self.vit
        if not isinstance(vit, AbSViT):
            return vit.forward_features(images), images.new_zeros(())
        x0 = vit.embed(images)
        if not self.top_down:
            return vit.norm(vit.run_blocks(x0)[0]), images.new_zeros(())
        if prior is None:
            raise ValueError("AbSViT with feedback needs the text prior (B, text_dim)")
        tokens, trace = vit.run_blocks(x0, self.top_down_signals(x0, prior), record=True)
        return vit.norm(tokens), vit.variational_loss(trace)

    @torch.no_grad()
    def attention_map(self, images: torch.Tensor, prior: torch.Tensor | None = None, *,
                      top_down: bool = True) -> torch.Tensor:
        """Per-patch L2 norm of the tokens after the first ``map_depth`` blocks, shape (B, H, W)
        (``AbSViT.attention_map``).

        ``top_down``: with the text prior's top-down signal (AbSViT with feedback; ``prior`` required),
        else bottom-up. A plain ViT, or AbSViT with feedback off, has only the bottom-up map."""
        vit = self.vit
        if not isinstance(vit, AbSViT):
            return vit_attention_map(vit, images)
        if not (top_down and self.top_down):
            return vit.attention_map(images, top_down=False)
        if prior is None:
            raise ValueError("the top-down map needs the text prior (B, text_dim); top_down=False gives bottom-up")
        x0 = vit.embed(images)
        tokens = vit.run_blocks(x0, self.top_down_signals(x0, prior), depth=map_depth(len(vit.blocks)))[0]
        return tokens[:, vit.num_prefix_tokens:].norm(dim=-1).reshape(images.shape[0], *vit.patch_embed.grid_size)


    @torch.no_grad()
    def class_attention_map(self, images: torch.Tensor, prior: torch.Tensor | None = None, *,
                            top_down: bool = True) -> torch.Tensor:
        """The official V&L demo's map (``forward_att_vis``), shape (B, H, W): the last block's class-token-to-patch
        attention summed over heads, in pass 2 with the text prior's top-down signal (``top_down``; AbSViT with
        feedback, ``prior`` required), else bottom-up. A plain ViT has only the bottom-up map."""
        vit = self.vit
        if not isinstance(vit, AbSViT):
            return vit_class_attention_map(vit, images)
        x0 = vit.embed(images)
        tds = None
        if top_down and self.top_down:
            if prior is None:
                raise ValueError("the top-down map needs the text prior (B, text_dim); top_down=False gives bottom-up")
            tds = self.top_down_signals(x0, prior)
        x = vit.run_blocks(x0, tds, depth=len(vit.blocks) - 1)[0]
        last = vit.blocks[-1]
        grid = vit.patch_embed.dynamic_feat_size(images.shape[-2:])
        return class_token_attention(last.attn, last.norm1(x), vit.num_prefix_tokens).reshape(images.shape[0], *grid)


def declared(folder) -> dict:
    """What a text encoder folder says of itself in ``absvit.json``: ``pretrained`` (the embedded one: False at
    random init, True after its brief masked-LM) and ``pretraining`` (how, in words); None where it says nothing
    (e.g. ``roberta-base`` saved by ``transformers``)."""
    try:
        said = json.loads((Path(folder) / "absvit.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        said = {}
    said = said if isinstance(said, dict) else {}
    pretrained, pretraining = said.get("pretrained"), said.get("pretraining")
    return {"pretrained": pretrained if isinstance(pretrained, bool) else None,
            "pretraining": pretraining if isinstance(pretraining, str) else None}


TEXT_ENCODER_EXPECTED = ("expected a RoBERTa folder saved by transformers' save_pretrained, e.g. roberta-base: "
                         "config.json, model.safetensors or pytorch_model.bin, and the tokenizer's tokenizer.json or "
                         "vocab.json + merges.txt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
SAMPLE_TEXT = "what colour is the ring on the table?"  # must tokenise to more than the special tokens


def roberta_config_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a RoBERTa folder saved by ``save_pretrained`` (None if it looks like one): its config,
    weights and tokenizer files (read as files, without transformers)."""
    if not folder.is_dir():
        return "no such folder"
    config = folder / "config.json"
    if not config.is_file():
        return "no config.json in it"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return "config.json is not a JSON object"
    if model_type != "roberta":
        return f"config.json says model_type {model_type!r}, not 'roberta'"
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        return f"no weights file in it (none of {', '.join(WEIGHT_FILES[:2])})"
    if not ((folder / "tokenizer.json").is_file() or all((folder / f).is_file() for f in ("vocab.json", "merges.txt"))):
        return "no tokenizer files in it (tokenizer.json, or vocab.json + merges.txt)"
    return None


def tokenizer_problem(tokenizer, vocab_size: int) -> str | None:
    """Why ``tokenizer`` does not fit a text encoder with ``vocab_size`` embeddings (None if it does): its ids must
    index the embedding, and a sample question must give tokens beyond the special ones."""
    if len(tokenizer) > vocab_size:
        return (f"its tokenizer has {len(tokenizer)} tokens but the model embeds {vocab_size} (config.json "
                "vocab_size): a tokenizer of another model?")
    ids = tokenizer(SAMPLE_TEXT)["input_ids"]
    special = set(tokenizer.all_special_ids)
    if not [i for i in ids if i not in special]:
        return (f"its tokenizer turns {SAMPLE_TEXT!r} into special tokens only "
                f"({tokenizer.convert_ids_to_tokens(ids)}): an empty or untrained tokenizer?")
    return None


def check_text_encoder(folder, where: str = "text encoder"):
    """The tokenizer of the RoBERTa folder ``folder`` (``save_pretrained`` layout), read without the hub, once the
    folder has been checked (``roberta_config_problem``, ``tokenizer_problem``); CheckpointError
    ``<where>: <folder>: <problem> (<expected>)`` otherwise."""
    folder = Path(folder)
    problem = roberta_config_problem(folder)
    if problem is None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            problem = f"its tokenizer does not load ({str(e).splitlines()[0]})"
        else:
            vocab_size = json.loads((folder / "config.json").read_text()).get("vocab_size")
            problem = tokenizer_problem(tokenizer, int(vocab_size or 0))
    if problem is not None:
        raise CheckpointError(f"{where}: {folder}: {problem} ({TEXT_ENCODER_EXPECTED})")
    return tokenizer


def tokenizer_of(folder):
    """The text encoder folder's tokenizer (``save_pretrained`` layout), read without the hub, the folder checked
    (``check_text_encoder``)."""
    return check_text_encoder(folder)


class TextEncoder(nn.Module):
    """RoBERTa (``transformers.RobertaModel``, no pooler) from a local ``save_pretrained`` folder, no hub access.

    ``forward`` gives every token's output (B, L, H); ``prior`` the text prior that steers AbSViT.
    """

    def __init__(self, folder):
        super().__init__()
        from transformers import RobertaModel  # heavy: imported only where a text encoder is built

        folder = Path(folder)
        expected = TEXT_ENCODER_EXPECTED
        problem = roberta_config_problem(folder)
        if problem is not None:
            raise CheckpointError(f"text encoder: {folder}: {problem} ({expected})")
        try:
            model, info = RobertaModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False,
                                                       output_loading_info=True, ignore_mismatched_sizes=True)
        except (OSError, ValueError, RuntimeError, KeyError) as e:  # a size mismatch is a RuntimeError
            raise CheckpointError(f"text encoder: {folder}: its weights do not load as RoBERTa "
                                  f"({str(e).strip().splitlines()[0]}) ({expected})") from None
        if info["missing_keys"] or info.get("mismatched_keys"):
            missing = sorted(info["missing_keys"]) or sorted(k for k, *_ in info["mismatched_keys"])
            raise CheckpointError(f"text encoder: {folder}: the weights lack or misfit {len(missing)} of RobertaModel's "
                                  f"tensors ({', '.join(missing[:3])}, ...): weights of another model? ({expected})")
        self.roberta = model
        self.hidden_size = model.config.hidden_size
        self.eos_token_id = 2 if model.config.eos_token_id is None else model.config.eos_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Every token's output (B, L, H); ``attention_mask`` is 1 on text, 0 on padding."""
        return self.roberta(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def prior(self, tokens: torch.Tensor, input_ids: torch.Tensor, kind: str) -> torch.Tensor:
        """The text prior (B, H) from ``forward``'s tokens: ``"mean"`` over ALL positions, padding included
        (the official VQA code), or ``"eos"``, the output at the first ``</s>`` (retrieval; a text without one
        gives position 0: tokenise with the special tokens)."""
        if kind == "mean":
            return tokens.mean(dim=1)
        if kind == "eos":
            first_eos = (input_ids == self.eos_token_id).int().argmax(dim=-1)
            return tokens[torch.arange(tokens.shape[0], device=tokens.device), first_eos]
        raise ValueError(f"unknown text prior kind {kind!r}; expected one of {PRIOR_KINDS}")
