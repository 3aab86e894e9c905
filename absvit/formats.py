"""How numbers and tables are written as text, in one place: durations, hours, Markdown and LaTeX, dotted keys.

Imports nothing heavy (pandas only inside ``markdown_table``): data-prep jobs and planning use it too.
"""
from __future__ import annotations

import math
import re


def hms(seconds: float | None) -> str:
    """``h:mm:ss`` (hours unbounded: ``31:00:00``); ``?`` for an unknown (None / NaN) duration."""
    if seconds is None or math.isnan(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def hours(value: float) -> str:
    """GPU- or CPU-hours for a table: ``0``, ``<0.01``, ``1.23``; ``?`` where unknown."""
    if math.isnan(value):
        return "?"
    return "0" if value == 0 else "<0.01" if value < 0.005 else f"{value:.2f}"


def markdown_table(frame, index: bool = True) -> str:
    """A GitHub Markdown table of a DataFrame (no tabulate dependency); missing values show as ``--``."""
    import pandas as pd

    frame = frame.reset_index() if index else frame
    cells = [[str(c) for c in frame.columns]]
    cells += [["--" if pd.isna(v) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([lines[0], "|" + "---|" * len(frame.columns)] + lines[1:])


def tex_escape(text) -> str:
    """Plain text for a LaTeX document: ``_ & % # $`` escaped, ``<`` / ``>`` in math mode."""
    text = re.sub(r"([_&%#$])", r"\\\1", str(text))
    return text.replace("<", "$<$").replace(">", "$>$")


def flatten(mapping: dict, prefix: str = "") -> dict:
    """Nested mappings as one level of dotted keys: ``{"recipe": {"lr": 1}}`` -> ``{"recipe.lr": 1}``."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}


def display_name(model: str) -> str:
    """The paper's name of a timm model (absvit_base_patch16_224 -> AbSViT-B, resnet101 -> ResNet-101),
    or the timm name itself for any other model (absvit_pico_patch8_64, resnet10t)."""
    m = re.fullmatch(r"(absvit|vit)_(tiny|small|base|large|huge)_patch16_224", model)
    if m:
        return f"{'AbSViT' if m[1] == 'absvit' else 'ViT'}-{SIZES[m[2]]}"
    m = re.fullmatch(r"resnet(\d+)", model)
    return f"ResNet-{m[1]}" if m else model
