"""Pretraining recipe: the paper's values (DeiT/RVT recipe, appendix section 4) as defaults.

The embedded default overrides a few of them from config.yaml; every value reaches the
training code from here, and all of them are logged with the run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from absvit.errors import UsageError, did_you_mean


class Recipe:
    """A dataclass of training values with typed, key-checked construction from config."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "recipe"):
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            hint = did_you_mean(unknown[0], known) if len(unknown) == 1 else ""
            raise UsageError(f"{where}: unknown key(s) {unknown}{hint}; known keys are {sorted(known)}")
        defaults = cls()
        for k, v in values.items():
            expected = type(getattr(defaults, k))
            ok = isinstance(v, expected) and not (expected is not bool and isinstance(v, bool))
            ok = ok or (expected is float and isinstance(v, int) and not isinstance(v, bool))
            if not ok:
                raise UsageError(f"{where}.{k}: expected {expected.__name__}, got {v!r}")
        return cls(**{k: float(v) if type(getattr(defaults, k)) is float else v for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Keys that say how a run is executed, not what it computes: a resume may change them.
    RESOURCE_KEYS: tuple[str, ...] = ("workers",)

    def identity(self) -> dict[str, Any]:
        """The values that define the run (everything but resource keys): a resume must match them."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RESOURCE_KEYS}


@dataclass
class PretrainRecipe(Recipe):
    epochs: int = 300
    batch_size: int = 512  # global, over all processes
    lr: float = 5e-4  # for batch 512, scaled linearly with batch_size / 512
    min_lr: float = 1e-5
    warmup_epochs: int = 5
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    opt: str = "adamw"
    sched: str = "cosine"
    drop_path: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    color_jitter: float = 0.4
    auto_augment: str = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    repeated_aug: bool = True
    model_ema: bool = True
    ema_decay: float = 0.99996
    interpolation: str = "bicubic"
    img_size: int = 224
    crop_pct: float = 0.875
    var_weight: float = 0.1  # L_var weight; 0 for the Table 2 ablation
    seed: int = 0
    workers: int = 8
    compile: str = "auto"  # torch.compile of the training objective: "on", "off", "auto" (on for CUDA, off on CPU)
    extra: dict[str, Any] = field(default_factory=dict)

    RESOURCE_KEYS = ("workers", "compile")
    COMPILE = ("auto", "on", "off")

    def __post_init__(self):
        if self.compile not in self.COMPILE:
            raise UsageError(f"recipe key compile: expected one of {', '.join(map(repr, self.COMPILE))}, "
                             f"got {self.compile!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "recipe"):
        if isinstance(values.get("compile"), bool):  # YAML 1.1 reads `compile: on` / `compile=off` as booleans
            values = {**values, "compile": "on" if values["compile"] else "off"}
        return super().from_dict(values, where=where)

    @property
    def scaled_lr(self) -> float:
        return self.lr * self.batch_size / 512


@dataclass
class SegmentRecipe(Recipe):
    """Segmentation fine-tuning: the paper's MMSegmentation setup (ADE20K values as defaults)."""

    iterations: int = 160_000
    batch_size: int = 16  # global, over all processes
    lr: float = 6e-5
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.01  # none on pos_embed, cls_token, prompt and norm layers
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0  # poly schedule
    min_lr: float = 0.0
    crop_height: int = 512
    crop_width: int = 512
    scale_long: int = 2048  # rescale target (MMSeg img_scale), times a ratio in ratio_range when training
    scale_short: int = 512
    ratio_min: float = 0.5
    ratio_max: float = 2.0
    cat_max_ratio: float = 0.75
    head_channels: int = 512
    aux_channels: int = 256
    aux_weight: float = 0.4
    dropout: float = 0.1
    drop_path: float = 0.1
    checkpoint_every: int = 4000
    seed: int = 0
    workers: int = 4

    RESOURCE_KEYS = ("workers", "checkpoint_every")
