"""The L_var ablation (Table 2): one row per arm from its robustness JSON files.

``absvit ablation`` writes ``lvar.csv`` and mirrors the same numbers into one MLflow run
(tag ``absvit.stage=ablation``), from which ``absvit tables --from-mlflow`` rebuilds Table 2.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from absvit.io import atomic_path
from absvit.tracking import Tracker

# Table 2 column -> (suite file, number in it)
COLUMNS = {"clean": ("clean", "top1"), "in_c": ("imagenet-c", "mce"), "in_a": ("imagenet-a", "top1"),
           "in_r": ("imagenet-r", "top1"), "in_sk": ("imagenet-sketch", "top1")}
ARMS = ("without_lvar", "with_lvar")


def arm_row(eval_dir) -> dict:
    eval_dir = Path(eval_dir)
    row = {}
    for column, (suite, key) in COLUMNS.items():
        path = eval_dir / f"{suite}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing result of suite {suite!r} (expected `absvit evaluate` output)")
        row[column] = float(json.loads(path.read_text())[key])
    return row


def summarize(eval_dirs: dict[str, Path], out_csv, *, label: str, preset: str, runs: dict[str, str],
              tracking_uri: str | None = None, track: bool = True) -> pd.DataFrame:
    frame = pd.DataFrame([{"arm": arm, "run": runs[arm], **arm_row(eval_dirs[arm])} for arm in ARMS])
    with atomic_path(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    tracker = Tracker(f"ablation/{preset}/lvar", uri=tracking_uri, enabled=track,
                      params={"label": label, "preset": preset, **{f"run.{a}": r for a, r in runs.items()}},
                      tags={"absvit.stage": "ablation", "absvit.preset": preset})
    tracker.log_metrics({f"{row.arm}.{c}": getattr(row, c) for row in frame.itertuples() for c in COLUMNS})
    tracker.log_artifact(out_csv)
    tracker.finish()
    return frame
