"""Seed statistics for the tables: mean +- sample standard deviation per cell, and Welch's t-test
between the two arms of a comparison (with vs without L_var, ViT vs AbSViT).

Each table cell is the mean over the seeds that produced it; the spread is the sample standard
deviation (ddof=1), shown with the number of seeds n. Two arms differ beyond the seed spread when
Welch's two-sided t-test (unequal variances) gives p < ALPHA; with fewer than two seeds per arm
there is no spread to compare against, and the report says so instead of guessing.
"""
from __future__ import annotations

import math

import pandas as pd
from scipy import stats

ALPHA = 0.05
TEX_PM = r"$\pm$"  # base LaTeX: no package needed
TEST = f"Welch's two-sided t-test (unequal variances), p < {ALPHA}"


def cell(mean: float, std: float, n: int, *, tex: bool = False, digits: int = 1) -> str:
    """``65.5`` for one seed; ``65.5 ± 0.4`` (LaTeX: ``65.5$\\pm$0.4``) over several; ``--`` for no number."""
    if pd.isna(mean):
        return "--"
    if n < 2 or pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f}{TEX_PM if tex else ' ± '}{std:.{digits}f}"


def welch(a, b) -> dict:
    """Difference of means (b - a), Welch's t and p, and whether it exceeds the seed spread."""
    a, b = [float(x) for x in a if not pd.isna(x)], [float(x) for x in b if not pd.isna(x)]
    out = {"n_a": len(a), "n_b": len(b), "difference": (sum(b) / len(b) - sum(a) / len(a)) if a and b else math.nan,
           "t": math.nan, "p": math.nan, "verdict": "one seed: no spread to compare"}
    if len(a) < 2 or len(b) < 2:
        return out
    if pd.Series(a).std() == 0 and pd.Series(b).std() == 0:
        out["verdict"] = "identical across seeds" if a[0] == b[0] else "no spread: every seed agrees"
        return out
    result = stats.ttest_ind(b, a, equal_var=False)
    out.update(t=float(result.statistic), p=float(result.pvalue))
    out["verdict"] = "exceeds the seed spread" if out["p"] < ALPHA else "within the seed spread"
    return out


def compare(long: pd.DataFrame, rows: str, first: str, second: str, columns: dict[str, str], *,
            pair: str) -> pd.DataFrame:
    """One row per column: ``second`` minus ``first`` (their per-seed values in ``long``), Welch's test."""
    out = []
    for column, head in columns.items():
        a = long.loc[long[rows] == first, column]
        b = long.loc[long[rows] == second, column]
        out.append({"pair": pair, "column": head, **welch(a, b)})
    return pd.DataFrame(out, columns=["pair", "column", "n_a", "n_b", "difference", "t", "p", "verdict"])
