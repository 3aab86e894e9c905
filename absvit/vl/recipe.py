"""The V&L fine-tuning recipe (``absvit vl-vqa`` / ``vl-retrieval``): the official code's values per task as defaults,
every key checked as the other recipes' are (``absvit.recipe``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from absvit.errors import UsageError
from absvit.recipe import ANY, FRACTION, OneOf, Range, Recipe, Where


@dataclass
class VLRecipe(Recipe):
    """V&L fine-tuning (appendix section 4; the official ``vision_language/`` on METER, its README's commands): the
    VQAv2 values as defaults; ``TASK_DEFAULTS`` holds what Flickr30k retrieval sets otherwise (``for_task``)."""

    epochs: int = 10
    batch_size: int = 432  # per optimiser update, over all processes: the README's 6 GPUs x 24 x 3 accumulated steps
    accum_steps: int = 3  # micro-batches accumulated per update (METER's `batch_size // (per-GPU batch x GPUs)`)
    lr: float = 1e-5  # the encoders'; the fusion, heads and feedback get multiples of it
    fusion_mult: float = 10.0  # `cross_modal` parameters (lr_mult_cross_modal)
    head_mult: float = 50.0  # the task heads (lr_mult_head): `vqa_classifier`, `itm_score`
    feedback_mult: float = 3.0  # names with `decode`: AbSViT's decoders and the prompt projection (lr_mult_feedback)
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of the steps with a linear warm-up, then linear decay to 0
    img_size: int = 224
    max_text_len: int = 50
    hidden: int = 768  # the fusion's width, heads, layers per modality, MLP ratio, dropout
    heads: int = 12
    layers: int = 6
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    var_weight: float = 0.3  # L_var of the AbSViT encoder (the official VQA loss adds it; retrieval's does not)
    prior_loss: str = "none"  # "none": the released code; "clip": the appendix's prior loss
    prior_weight: float = 0.1
    feedback: bool = True  # AbSViT's top-down pass (False: its pass-1 tokens)
    min_answer_count: int = 9  # VQA: answers given as `multiple_choice_answer` at least this often (3,129 on VQAv2)
    trainval: bool = False  # train on train + val (VQA: then scored on test-dev by the server; retrieval: on test)
    negatives: int = 15  # retrieval: negative texts per image for the ranking loss
    itm_weight: float = 1.0  # retrieval: the ITM loss's weight (METER sums every loss with weight 1)
    skip_bad_images: bool = False  # an image that does not decode: False fails the job at start, naming it; True
    #                                leaves its questions / captions out and counts it in result.json
    eval_batch_size: int = 256
    seed: int = 0
    workers: int = 8

    RESOURCE_KEYS = ("workers", "eval_batch_size")
    PRIOR_LOSSES = ("none", "clip")
    TASKS = ("vqa", "retrieval")
    # What `task_finetune_irtr_f30k_clip_bert` and the README's retrieval command set otherwise: batch 512 as
    # 8 GPUs x 4 x 16 accumulated steps, heads x5, 40 tokens, loss = ITM + rank (no L_var), Karpathy train + val.
    TASK_DEFAULTS = {
        "vqa": {},
        "retrieval": {"batch_size": 512, "accum_steps": 16, "head_mult": 5.0, "max_text_len": 40, "var_weight": 0.0,
                      "trainval": True},
    }
    CHECKS = {
        "epochs": Range(1), "batch_size": Range(1), "accum_steps": Range(1, "batch_size"), "lr": Range(0, lo_open=True),
        "fusion_mult": Range(0, lo_open=True), "head_mult": Range(0, lo_open=True),
        "feedback_mult": Range(0, lo_open=True), "weight_decay": Range(0),
        "warmup": FRACTION, "img_size": Range(16), "max_text_len": Range(3), "hidden": Range(1), "heads": Range(1),
        "layers": Range(1), "mlp_ratio": Range(0, lo_open=True), "dropout": FRACTION, "var_weight": Range(0),
        "prior_loss": OneOf(PRIOR_LOSSES, "a prior loss", " ('none': the released code; 'clip': the appendix)"),
        "prior_weight": Range(0), "feedback": ANY, "min_answer_count": Range(1), "trainval": ANY, "negatives": Range(1),
        "itm_weight": Range(0), "skip_bad_images": ANY, "eval_batch_size": Range(1), "seed": Range(0),
        "workers": Range(0),
    }

    @classmethod
    def for_task(cls, task: str, values: dict[str, Any], *, where: "str | Where" = "recipe") -> "VLRecipe":
        """The recipe of ``task`` ("vqa", "retrieval"): its ``TASK_DEFAULTS`` under ``values``."""
        if task not in cls.TASK_DEFAULTS:
            raise UsageError(f"{where}: unknown V&L task {task!r}; expected one of {', '.join(cls.TASK_DEFAULTS)}")
        return cls.from_dict({**cls.TASK_DEFAULTS[task], **values}, where=where)

    def check(self, where: "str | Where" = "recipe") -> None:
        super().check(where)
        where = Where.of(where)
        if self.hidden % self.heads:
            raise UsageError(f"{where('heads')}: {self.heads} does not divide hidden {self.hidden}; expected a divisor of it")
        if self.batch_size % self.accum_steps:
            raise UsageError(f"{where('accum_steps')}: {self.accum_steps} does not divide batch_size {self.batch_size}; "
                             "expected a divisor of it (each update sums accum_steps equal micro-batches)")

    def micro_batch(self, world_size: int, where: "str | Where" = "recipe") -> int:
        """Each process's micro-batch: ``batch_size / (world_size x accum_steps)``, which must be whole."""
        per = self.batch_size // self.accum_steps
        if per % world_size:
            raise UsageError(f"{Where.of(where)('batch_size')}: {self.batch_size} = {self.accum_steps} accumulated steps x {per} "
                             f"does not split over {world_size} processes; expected a multiple of "
                             f"{self.accum_steps * world_size} (accum_steps x processes)")
        return per // world_size
