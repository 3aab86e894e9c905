"""The V&L tasks on ``METER``: heads, training objectives, the CLIP prior loss, the optimiser's parameter
groups and schedule, and retrieval's recall@k.

The objectives are what ``engine.train_one_epoch`` calls, ``objective(inputs, targets) -> loss``:

- ``VQAObjective``: inputs ``(images, input_ids, attention_mask)``, targets the soft scores (B, #answers).
- ``RetrievalObjective`` (METER's ``task_finetune_irtr_f30k``): inputs ``(images, input_ids, attention_mask,
  negative_ids, negative_masks)`` with K negative texts per image (B, K, L); targets unused.

Both add ``var_weight`` x the visual encoder's L_var (the official VQA loss does, at 0.3; its retrieval loss does not:
the retrieval recipe sets 0) and, with ``prior_loss="clip"`` (the appendix; the released code has it commented out),
``prior_weight`` x ``clip_prior_loss``. Submodules keep METER's names (``vqa_classifier``, ``itm_score``,
``rank_output``, ``cross_modal_*``), which ``param_groups`` matches as METER's ``set_schedule`` does.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.scheduler import PolyLRScheduler

from absvit.vl.fusion import METER, init_meter_weights

__all__ = ["ITMHead", "PRIOR_LOSSES", "RankHead", "RetrievalObjective", "VQAHead", "VQAObjective",
           "clip_prior_loss", "lr_schedule", "param_groups", "param_role", "recall_at_k"]

PRIOR_LOSSES = ("none", "clip")


class VQAHead(nn.Sequential):
    """METER's VQA classifier: Linear(d, d) -> LayerNorm -> GELU -> Linear(d, #answers), d = 2 x hidden."""

    def __init__(self, in_dim: int, num_answers: int):
        super().__init__(nn.Linear(in_dim, in_dim), nn.LayerNorm(in_dim), nn.GELU(), nn.Linear(in_dim, num_answers))
        self.apply(init_meter_weights)


class ITMHead(nn.Module):
    """Image-text matching: two logits (0 mismatched, 1 matched) from the pooled pair."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, 2)
        self.apply(init_meter_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class RankHead(nn.Module):
    """Retrieval's score of a pair (METER's ``rank_output``), one logit; ``itm``: start from its "matched" row."""

    def __init__(self, in_dim: int, *, itm: ITMHead | None = None):
        super().__init__()
        self.fc = nn.Linear(in_dim, 1)
        self.apply(init_meter_weights)
        if itm is not None:
            with torch.no_grad():
                self.fc.weight.copy_(itm.fc.weight[1:])
                self.fc.bias.copy_(itm.fc.bias[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)[:, 0]


def clip_prior_loss(image_cls: torch.Tensor, prior: torch.Tensor, temperature: float = 0.07,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between the L2-normalised image class tokens (B, D) and projected text priors (B, D):
    item i's pair is the positive, the batch's other items the negatives; the mean of the image->text and
    text->image cross-entropies. ``mask`` (B,): only the rows where it is 1 are averaged (retrieval: the
    positive pairs), every item stays a negative. (The official code also gathers negatives across GPUs.)"""
    image_cls, prior = F.normalize(image_cls.float(), dim=-1), F.normalize(prior.float(), dim=-1)
    logits = image_cls @ prior.t() / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    per_item = (F.cross_entropy(logits, labels, reduction="none")
                + F.cross_entropy(logits.t(), labels, reduction="none")) / 2
    if mask is None:
        return per_item.mean()
    mask = mask.to(per_item.dtype)
    return (per_item * mask).sum() / mask.sum()


def check_prior_loss(prior_loss: str, meter: METER) -> None:
    if prior_loss not in PRIOR_LOSSES:
        raise ValueError(f"unknown prior_loss {prior_loss!r}; expected one of {PRIOR_LOSSES}")
    if prior_loss == "clip" and not meter.visual.top_down:
        raise ValueError("prior_loss 'clip' needs AbSViT with feedback as the visual encoder (it trains the "
                         "prompt projection); a plain ViT has none")


class VQAObjective(nn.Module):
    """VQA's loss: BCE-with-logits against the soft scores, times #answers (METER, after BAN), + ``var_weight``
    x L_var (+ ``prior_weight`` x the CLIP prior loss). ``logits(inputs)`` gives the answers' scores."""

    def __init__(self, meter: METER, head: VQAHead, *, var_weight: float = 0.3, prior_loss: str = "none",
                 prior_weight: float = 0.1):
        super().__init__()
        check_prior_loss(prior_loss, meter)
        self.meter, self.vqa_classifier = meter, head
        self.var_weight, self.prior_loss, self.prior_weight = var_weight, prior_loss, prior_weight

    def logits(self, inputs) -> torch.Tensor:
        images, input_ids, attention_mask = inputs
        return self.vqa_classifier(self.meter(images, input_ids, attention_mask, "mean")["cls_feats"])

    def forward(self, inputs, targets: torch.Tensor) -> torch.Tensor:
        images, input_ids, attention_mask = inputs
        out = self.meter(images, input_ids, attention_mask, "mean")
        logits = self.vqa_classifier(out["cls_feats"]).float()  # the soft scores (0.3, 0.6, 0.9) in fp32, not bf16
        loss = F.binary_cross_entropy_with_logits(logits, targets.float()) * targets.shape[1]
        loss = loss + self.var_weight * out["var_loss"]
        if self.prior_loss == "clip":
            loss = loss + self.prior_weight * clip_prior_loss(out["image_cls"], out["prior"])
        return loss


class RetrievalObjective(nn.Module):
    """Flickr30k retrieval's loss (METER's ``task_finetune_irtr_f30k``): ``itm_weight`` x ITM + the rank loss
    (+ ``var_weight`` x L_var of the rank pass, 0 in the official recipe, + ``prior_weight`` x the CLIP prior loss on
    its positive pairs).

    ITM: half the batch's pairs (at random places) get another image of the batch (a random other index),
    labels 1 matched / 0 not, cross-entropy of ``itm_score``. Rank: each image with its text and its K
    negatives, cross-entropy of the K + 1 ``rank_output`` scores with the positive as the target. ``generator``
    draws the ITM shuffling (None: torch's global CPU generator, which the project's checkpoints save and
    restore, so a resumed run draws what the uninterrupted one would). As in METER the ITM head is frozen
    (``train_itm_head=False``): the ITM loss trains the model under it, and ``rank_output`` (a copy of its
    "matched" row at the start) trains at the base lr. ``score(...)`` gives pairs' scores.
    """

    def __init__(self, meter: METER, itm_head: ITMHead, rank_head: RankHead, *, negatives: int = 15,
                 itm_weight: float = 1.0, var_weight: float = 0.0, prior_loss: str = "none",
                 prior_weight: float = 0.1, train_itm_head: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        check_prior_loss(prior_loss, meter)
        self.meter, self.itm_score, self.rank_output = meter, itm_head, rank_head
        self.itm_score.requires_grad_(train_itm_head)
        self.negatives, self.itm_weight, self.var_weight = negatives, itm_weight, var_weight
        self.prior_loss, self.prior_weight, self.generator = prior_loss, prior_weight, generator

    @property
    def chance_loss(self) -> float:
        """The loss of scores that ignore the pair (every pair scored alike): ln(K + 1) for the rank loss plus
        ``itm_weight`` x ln 2 for ITM. A training loss that stays here has learned nothing about the pairs."""
        return math.log(self.negatives + 1) + self.itm_weight * math.log(2)

    def score(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The rank score (B,) of each (image, text) pair."""
        return self.rank_output(self.meter(images, input_ids, attention_mask, "eos")["cls_feats"])

    def mismatched(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels (B,): 1 for B // 2 random pairs, 0 for the rest; each pair's image index: its own where
        matched, another of the batch where not)."""
        if batch < 2:
            raise ValueError(f"image-text matching needs at least 2 images in a batch to mismatch, got {batch}")
        labels = torch.zeros(batch, dtype=torch.long)
        labels[torch.randperm(batch, generator=self.generator)[:batch // 2]] = 1
        shift = torch.randint(1, batch, (batch,), generator=self.generator)
        index = (torch.arange(batch) + shift * (1 - labels)) % batch
        return labels.to(device, non_blocking=True), index.to(device, non_blocking=True)

    def forward(self, inputs, targets=None) -> torch.Tensor:
        images, input_ids, attention_mask, negative_ids, negative_masks = inputs
        B, K = negative_ids.shape[:2]
        if K != self.negatives:
            raise ValueError(f"expected {self.negatives} negative texts per image, got negative ids of shape "
                             f"{list(negative_ids.shape)}")
        labels, index = self.mismatched(B, images.device)
        itm = self.meter(images[index], input_ids, attention_mask, "eos")
        itm_loss = F.cross_entropy(self.itm_score(itm["cls_feats"]).float(), labels)

        ids = torch.cat([input_ids.unsqueeze(1), negative_ids], dim=1).flatten(0, 1)
        masks = torch.cat([attention_mask.unsqueeze(1), negative_masks], dim=1).flatten(0, 1)
        pairs = self.meter(images.repeat_interleave(K + 1, dim=0), ids, masks, "eos")
        scores = self.rank_output(pairs["cls_feats"]).float().view(B, K + 1)
        loss = F.cross_entropy(scores, scores.new_zeros(B, dtype=torch.long)) + self.itm_weight * itm_loss
        if self.var_weight:
            loss = loss + self.var_weight * pairs["var_loss"]
        if self.prior_loss == "clip":
            positive = (torch.arange(B * (K + 1), device=images.device) % (K + 1)) == 0
            loss = loss + self.prior_weight * clip_prior_loss(pairs["image_cls"], pairs["prior"], mask=positive)
        return loss


# METER's set_schedule, by parameter name (substrings): no weight decay for biases and norm layers' weights; the
# task heads at x head_mult (not `rank_output`: it trains at the base lr); the fusion at x fusion_mult; the feedback
# (`decode`: AbSViT's `decoders` and `prompt_decoder`) at x feedback_mult, its no-decay parameters in no group.
NO_DECAY = ("bias", "LayerNorm.weight", "norm.weight", "norm1.weight", "norm2.weight")
HEAD_NAMES = ("vqa_classifier", "nlvr2_classifier", "mlm_score", "itm_score", "snli_classifier")
FUSION_NAMES = ("cross_modal",)
FEEDBACK_NAMES = ("decode",)


def param_role(name: str) -> tuple[str, bool]:
    """(group kind: encoders / heads / fusion / feedback, weight decay?) of a parameter, by its name as METER's
    ``set_schedule`` decides (a name with a head name and ``cross_modal`` is in none of its groups: "none")."""
    decay = not any(n in name for n in NO_DECAY)
    head, fusion, feedback = (any(n in name for n in names) for names in (HEAD_NAMES, FUSION_NAMES, FEEDBACK_NAMES))
    if sum((head, fusion, feedback)) > 1:
        return "none", decay
    return ("heads" if head else "fusion" if fusion else "feedback" if feedback else "encoders"), decay


def param_groups(model: nn.Module, *, lr: float, fusion_mult: float = 10, head_mult: float = 50,
                 feedback_mult: float = 3, weight_decay: float = 0.01) -> list[dict]:
    """AdamW groups of ``model``'s trained parameters (an objective, or anything holding METER and heads), as
    METER's ``set_schedule`` makes them by name (``param_role``): the encoders (and ``rank_output``,
    ``token_type_embeddings``) at ``lr``; names with ``cross_modal`` at ``lr * fusion_mult``; the task heads at
    ``lr * head_mult``; names with ``decode`` (AbSViT's feedback decoders, the prompt projection) at
    ``lr * feedback_mult``. Names with ``bias`` or a norm layer's weight get no weight decay (the VQA head's
    LayerNorm, ``vqa_classifier.1``, is decayed: its name is none of them), the rest ``weight_decay`` (embeddings,
    ``pos_embed`` and ``cls_token`` included). The feedback's no-decay parameters (``prompt_decoder.bias``) are in
    no group, as in METER: never trained. Each group is named (``name``: encoders / fusion / heads / feedback,
    ``/no_decay`` added); empty groups are left out."""
    mult = {"encoders": 1.0, "fusion": fusion_mult, "heads": head_mult, "feedback": feedback_mult}
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        kind, decay = param_role(name)
        if not p.requires_grad or kind == "none" or (kind == "feedback" and not decay):
            continue
        key = kind if decay else f"{kind}/no_decay"
        group = groups.setdefault(key, {"name": key, "params": [], "lr": lr * mult[kind],
                                        "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(p)
    return list(groups.values())


def lr_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.1) -> PolyLRScheduler:
    """Per-step schedule of every group's lr: linear warm-up from 0 over ``int(warmup * total_steps)`` steps,
    then linear decay to 0 at ``total_steps`` (METER's, transformers' polynomial schedule with power 1).
    Call ``step_update(step)`` after each optimiser step."""
    warmup_steps = int(warmup * total_steps)
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must exceed the warm-up steps ({warmup_steps})")
    return PolyLRScheduler(optimizer, t_initial=total_steps - warmup_steps, power=1.0, lr_min=0.0,
                           warmup_t=warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


def recall_at_k(scores: torch.Tensor, text_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Retrieval recall@k (%) from ``scores`` (n_images, n_texts) and each text's image index (n_texts,).

    ``i2t_r{k}`` (METER's ``tr``): the share of images whose k best texts include one of their own;
    ``t2i_r{k}`` (``ir``): the share of texts whose k best images include their own. k is capped at the
    number of candidates."""
    scores, text_image = scores.float().cpu(), torch.as_tensor(text_image).cpu()
    n_images, n_texts = scores.shape
    if text_image.shape != (n_texts,):
        raise ValueError(f"text_image must have one image index per text ({n_texts},), got {list(text_image.shape)}")
    out = {}
    for k in ks:
        best_texts = scores.topk(min(k, n_texts), dim=1).indices  # (n_images, k)
        hit = (text_image[best_texts] == torch.arange(n_images)[:, None]).any(dim=1)
        out[f"i2t_r{k}"] = 100.0 * hit.sum().item() / n_images
    for k in ks:
        best_images = scores.topk(min(k, n_images), dim=0).indices  # (k, n_texts)
        hit = (best_images == text_image[None, :]).any(dim=0)
        out[f"t2i_r{k}"] = 100.0 * hit.sum().item() / n_texts
    return out
