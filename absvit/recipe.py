"""Pretraining recipe: the paper's values (DeiT/RVT recipe, appendix section 4) as defaults.

The embedded default overrides a few of them from config.yaml; every value reaches the
training code from here, and all of them are logged with the run.

Every key is checked when a recipe is made (``from_dict`` or direct construction): its type, then its
range or choices from the recipe's ``CHECKS`` table, so that a bad value is one line naming the key and
what it may be, at planning time (workflow/rules/common.smk) as on the command line, before any training.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from absvit.errors import UsageError, did_you_mean


class Where:
    """Where a recipe's keys were set, for messages: ``Where("recipe")("lr")`` is ``recipe.lr`` (``template``: how a
    key is named under the default ``where``). ``by_key`` names the keys set elsewhere by a template of their own
    (``{"lr": "--set {key}"}``: ``--set lr``), so that a typo on the command line or in one section of config.yaml
    is blamed on where it was made. ``str(where)`` is the default's prefix."""

    def __init__(self, default: str = "recipe", by_key: dict[str, str] | None = None, template: str = "{where}.{key}"):
        self.default, self.by_key, self.template = default, dict(by_key or {}), template

    def __call__(self, key: str) -> str:
        return self.by_key.get(key, self.template).format(where=self.default, key=key)

    def __str__(self) -> str:
        return self.default

    @classmethod
    def of(cls, where: "str | Where") -> "Where":
        return where if isinstance(where, Where) else cls(where)

    @classmethod
    def layered(cls, *layers: tuple[str, dict]) -> tuple[dict, "Where"]:
        """The values of config sections laid over each other, ``(prefix, values)`` from the bottom up, and where
        each key was set (the last section that holds it; keys in none are named under the first prefix)."""
        values, by_key = {}, {}
        for prefix, section in layers:
            values.update(section)
            by_key.update({k: f"{prefix}.{{key}}" for k in section})
        return values, cls(layers[0][0], by_key)


_WHERE = contextvars.ContextVar("recipe_where", default=Where())  # from_dict's `where`, for __post_init__


def _number(x) -> str:
    return x if isinstance(x, str) else f"{x:g}"


class Check:
    """A key's allowed values beyond its type: ``problem`` says what is wrong and what is allowed, or None."""

    refers = False  # compares with another key of the recipe: checked after every key's own range

    def problem(self, value, values: dict[str, Any], kind: str) -> str | None:
        return None


class Range(Check):
    """A number in an interval; a bound may name another key of the recipe (e.g. ``ratio_min <= ratio_max``)."""

    def __init__(self, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.refers = isinstance(lo, str) or isinstance(hi, str)

    def text(self) -> str:
        lo, hi = _number(self.lo) if self.lo is not None else None, _number(self.hi) if self.hi is not None else None
        if lo is not None and hi is not None:
            return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        return f"{'>' if self.lo_open else '>='} {lo}" if lo is not None else f"{'<' if self.hi_open else '<='} {hi}"

    def problem(self, value, values, kind):
        lo, hi = (values[b] if isinstance(b, str) else b for b in (self.lo, self.hi))
        low = lo is not None and (value < lo or self.lo_open and value == lo)
        high = hi is not None and (value > hi or self.hi_open and value == hi)
        if not (low or high):
            return None
        refs = [f"{b} is {values[b]!r}" for b in (self.lo, self.hi) if isinstance(b, str)]
        return f"{value!r} is out of range; expected {kind} {self.text()}" + (f" ({', '.join(refs)})" if refs else "")


class OneOf(Check):
    def __init__(self, choices: tuple[str, ...], what: str, note: str = ""):
        self.choices, self.what, self.note = choices, what, note

    def problem(self, value, values, kind):
        if value in self.choices:
            return None
        return (f"{value!r} is not {self.what}{did_you_mean(value, self.choices)}; expected one of "
                f"{', '.join(map(repr, self.choices))}{self.note}")


class Custom(Check):
    """``fn(value)``: what is wrong and what is allowed, or None (e.g. a check that asks timm)."""

    def __init__(self, fn: Callable[[Any], str | None]):
        self.fn = fn

    def problem(self, value, values, kind):
        return self.fn(value)


ANY = Check()  # booleans, free-form mappings: the type check is the whole check
FRACTION = Range(0, 1, hi_open=True)  # a probability / rate that must leave something: [0, 1)


# Optimizers every timm since 0.9 registers (tests/test_recipe.py keeps this a subset of list_optimizers()):
# known without importing timm, which takes seconds, so that planning a DAG of a usual recipe does not pay it.
COMMON_OPTIMIZERS = ("adamw", "adam", "sgd", "momentum", "nesterov", "lamb", "lars", "rmsprop", "rmsproptf", "adamp",
                     "sgdp", "radam", "nadam", "adabelief", "lion")


@functools.lru_cache(maxsize=None)
def _optimizer_problem(name: str) -> str | None:
    """timm's optimizer factory (create_optimizer_v2) reads ``[lookahead_]<name>``, case-insensitive."""
    *prefix, base = name.lower().split("_")
    if base in COMMON_OPTIMIZERS and prefix in ([], ["lookahead"]):
        return None
    from timm.optim import list_optimizers  # lazily: `import absvit.recipe` stays light (DAG planning imports it)

    known = list_optimizers()
    if base in known and prefix in ([], ["lookahead"]):
        return None
    return (f"{name!r} is not an optimizer timm knows{did_you_mean(name.lower(), known)}; expected a name of "
            f"timm.optim.list_optimizers(), optionally prefixed 'lookahead_': {', '.join(known)}")


# timm.data.auto_augment's config strings `<policy>-<section>-...`: the sections each parser reads (key ->
# value type). timm skips a section without a digit silently ('rand-zz' is plain RandAugment) and falls back to
# its default transforms for an unknown RandAugment set `t<name>`: both are refused here.
_AA_SECTIONS = {
    "rand": {"m": int, "n": int, "p": float, "mstd": float, "mmax": int, "inc": int},
    "augmix": {"m": int, "w": int, "d": int, "a": float, "b": int, "mstd": float},
    "auto": {"mstd": float},
}
_AA_POLICIES = ("original", "originalr", "v0", "v0r", "3a")  # AutoAugment policies (auto_augment_policy)
_RAND_SETS = ("weights", "3aw", "3a")  # RandAugment's `t<name>` transform sets (rand_augment_choices)
AUTO_AUGMENT_ALLOWED = (
    "'' (none), 'rand[-m<int>][-n<int>][-p<float>][-mstd<float>][-mmax<int>][-inc<int>][-t<set>]' (RandAugment, "
    f"set one of {'/'.join(_RAND_SETS)}), 'augmix[-m<int>][-w<int>][-d<int>][-a<float>][-b<int>][-mstd<float>]' "
    f"(AugMix) or '<policy>[-mstd<float>]' (AutoAugment, policy one of {'/'.join(_AA_POLICIES)}), "
    "e.g. 'rand-m9-mstd0.5-inc1'")


def _auto_augment_problem(value: str) -> str | None:
    """Parsed section by section as timm's create_transform does, then built by timm itself."""
    if not value:
        return None
    policy, *sections = value.split("-")
    family = "rand" if value.startswith("rand") else "augmix" if value.startswith("augmix") else "auto"
    if family in ("rand", "augmix") and policy != family or family == "auto" and policy not in _AA_POLICIES:
        return f"{value!r} has an unknown policy {policy!r}; expected {AUTO_AUGMENT_ALLOWED}"
    for section in sections:
        if family == "rand" and section.startswith("t"):
            if section[1:] not in _RAND_SETS:
                return f"{value!r} has an unknown RandAugment transform set {section!r}; expected {AUTO_AUGMENT_ALLOWED}"
            continue
        key, digits = (re.split(r"(\d.*)", section, maxsplit=1) + [""])[:2]  # as timm splits it: key, number
        kinds = _AA_SECTIONS[family]
        if key not in kinds or not digits:
            return (f"{value!r} has an unknown section {section!r} (timm reads {', '.join(kinds)} with a number); "
                    f"expected {AUTO_AUGMENT_ALLOWED}")
        try:
            kinds[key](digits)
        except ValueError:
            number = "an int" if kinds[key] is int else "a float"
            return f"{value!r}: section {section!r} needs {number} value; expected {AUTO_AUGMENT_ALLOWED}"
    # planning a DAG: the parse above (timm's own grammar) without the seconds an import of timm takes; every
    # verb has imported timm before it makes its recipe, and asks timm too
    refused = timm_refuses(value, family) if "timm" in sys.modules else None
    return f"{value!r} is refused by timm ({refused}); expected {AUTO_AUGMENT_ALLOWED}" if refused else None


@functools.lru_cache(maxsize=None)
def timm_refuses(value: str, family: str) -> str | None:
    """What timm raises building the transform of an auto_augment string, or None."""
    from timm.data import auto_augment as aa

    build = {"rand": aa.rand_augment_transform, "augmix": aa.augment_and_mix_transform}.get(family,
                                                                                           aa.auto_augment_transform)
    try:
        build(value, None)
    except Exception as e:  # noqa: BLE001  (timm asserts; whatever it raises, the value is not usable)
        return f"{type(e).__name__}: {e}"
    return None


def check_patch_multiple(img_size: int, model_name: str, where: "str | Where" = "recipe", patch: int | None = None) -> None:
    """``img_size`` must be a multiple of the model's patch size: timm's patch embedding silently drops the
    border pixels of any other size (a cropped token grid).

    ``patch``: the model's own (absvit.pretrain reads it from the model); else the ``patch<N>`` of a timm name
    such as absvit_tiny_patch16_224 (at planning time, without importing timm); a name without one is not checked.
    """
    if patch is None:
        found = re.search(r"patch(\d+)", model_name)
        if not found:
            return
        patch = int(found[1])
    if img_size % patch:
        below = img_size // patch * patch
        eg = f"{below} or {below + patch}" if below else str(patch)
        raise UsageError(f"{Where.of(where)('img_size')}: {img_size} is not a multiple of {model_name}'s patch size {patch}; "
                         f"expected a multiple of {patch} (e.g. {eg})")


class Recipe:
    """A dataclass of training values with typed, key-checked construction from config."""

    CHECKS: dict[str, Check] = {}  # every key -> its allowed values beyond its type (the subclasses' tables)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: "str | Where" = "recipe"):
        where = Where.of(where)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if len(unknown) == 1:
            raise UsageError(f"{where(unknown[0])}: unknown key{did_you_mean(unknown[0], known)}; known keys are "
                             f"{sorted(known)}")
        if unknown:
            raise UsageError(f"{where}: unknown keys {', '.join(where(k) for k in unknown)}; known keys are "
                             f"{sorted(known)}")
        floats = {f.name for f in dataclasses.fields(cls) if f.type in (float, "float")}
        token = _WHERE.set(where)  # the checks run once, in __post_init__, under these names
        try:  # an int where a float is expected (lr: 1) is that float; every other value is checked as it is
            return cls(**{k: float(v) if k in floats and type(v) is int else v for k, v in values.items()})
        finally:
            _WHERE.reset(token)

    @staticmethod
    def _check_type(key: str, value, expected: type, where: Where) -> None:
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        ok = ok or (expected is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise UsageError(f"{where(key)}: expected {expected.__name__}, got {value!r}")

    def check(self, where: "str | Where" = "recipe") -> None:
        """Each key's type, then its CHECKS entry (keys compared with another key last); UsageError
        ``<where>.<key>: <what is wrong>; <what is allowed>`` for the first bad one."""
        where = Where.of(where)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        types = {f.name: type(f.default_factory() if f.default is dataclasses.MISSING else f.default)
                 for f in dataclasses.fields(self)}
        for k, v in values.items():
            self._check_type(k, v, types[k], where)
        for k in sorted(values, key=lambda k: self.CHECKS[k].refers):
            kind = {int: "an int", float: "a float"}.get(types[k], f"a {types[k].__name__}")
            problem = self.CHECKS[k].problem(values[k], values, kind)
            if problem:
                raise UsageError(f"{where(k)}: {problem}")

    def __post_init__(self):
        self.check(_WHERE.get())

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
    sched_on_steps: bool = False  # the schedule (warm-up included) per epoch, as DeiT; True: per update (timm's)
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
    init: str = "timm"  # the attention's init: "timm" (the official), "mimetic" (absvit.models.init)
    pos_embed: str = "learned"  # "learned" (the official), "sincos": MAE's fixed 2-D sin-cos table
    seed: int = 0
    workers: int = 8
    compile: str = "auto"  # torch.compile of the training objective: "on", "off", "auto" (on for CUDA, off on CPU)
    extra: dict[str, Any] = field(default_factory=dict)

    RESOURCE_KEYS = ("workers", "compile")
    COMPILE = ("auto", "on", "off")
    SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "constant")
    INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos")
    CHECKS = {  # key -> allowed values beyond the type (img_size vs the model's patch size: absvit.pretrain)
        "epochs": Range(1), "batch_size": Range(1), "lr": Range(0, lo_open=True), "min_lr": Range(0),
        "warmup_epochs": Range(0), "warmup_lr": Range(0), "sched_on_steps": ANY, "weight_decay": Range(0),
        "opt": Custom(_optimizer_problem),
        "sched": OneOf(SCHEDULERS, "a timm scheduler absvit pretrain runs",
                       " (not 'plateau': it needs a metric; not 'wsd' / 'rsqrt': short runs have no decay phase; "
                       "not 'none')"),
        "drop_path": FRACTION, "mixup": Range(0), "cutmix": Range(0), "smoothing": FRACTION, "color_jitter": Range(0),
        "auto_augment": Custom(_auto_augment_problem), "reprob": Range(0, 1), "repeated_aug": ANY, "model_ema": ANY,
        "ema_decay": Range(0, 1, lo_open=True, hi_open=True),
        "interpolation": OneOf(INTERPOLATIONS, "an interpolation of timm's transforms",
                               " ('random' is for training transforms only: the eval transform refuses it)"),
        "img_size": Range(1), "crop_pct": Range(0, 1, lo_open=True), "var_weight": Range(0),
        "init": OneOf(("timm", "mimetic"), "an initialisation", " ('timm': the official; 'mimetic': Trockman & Kolter's "
                      "of self-attention)"),
        "pos_embed": OneOf(("learned", "sincos"), "a position embedding", " ('learned': the official; 'sincos': MAE's "
                           "fixed 2-D table)"),
        "seed": Range(0),
        "workers": Range(0), "compile": OneOf(COMPILE, "a torch.compile mode"), "extra": ANY,
    }

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: "str | Where" = "recipe"):
        if isinstance(values.get("compile"), bool):  # YAML 1.1 reads `compile: on` / `compile=off` as booleans
            values = {**values, "compile": "on" if values["compile"] else "off"}
        if "auto_augment" in values and values["auto_augment"] is None:  # `auto_augment: null`, `--set auto_augment=`
            values = {**values, "auto_augment": ""}
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
    CHECKS = {  # key -> allowed values beyond the type
        "iterations": Range(1), "batch_size": Range(1), "lr": Range(0, lo_open=True), "beta1": FRACTION,
        "beta2": FRACTION, "weight_decay": Range(0), "warmup_iters": Range(0),
        "warmup_ratio": Range(0, 1, lo_open=True), "power": Range(0, lo_open=True), "min_lr": Range(0),
        "crop_height": Range(1), "crop_width": Range(1), "scale_long": Range(1), "scale_short": Range(1, "scale_long"),
        "ratio_min": Range(0, "ratio_max", lo_open=True), "ratio_max": Range(0, lo_open=True),
        "cat_max_ratio": Range(0, 1, lo_open=True), "head_channels": Range(1), "aux_channels": Range(1),
        "aux_weight": Range(0), "dropout": FRACTION, "drop_path": FRACTION, "checkpoint_every": Range(1),
        "seed": Range(0), "workers": Range(0),
    }
