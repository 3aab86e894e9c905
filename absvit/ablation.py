"""Two-arm robustness comparisons, one row per arm from its robustness JSON files.

- ``lvar`` (Table 2): AbSViT without / with the variational loss (arms ``without_lvar``, ``with_lvar``);
- ``robustness`` (Table 3): ViT vs AbSViT (arms ``vit``, ``absvit``).

``absvit ablation --name NAME`` writes ``NAME.csv`` (one row per arm and seed: arm, run, seed, model,
the five numbers, the label space's size and whether a set's folders of other classes were skipped; an arm has one eval folder per seed) and mirrors the same numbers into one MLflow run tagged ``absvit.stage=ablation``, ``absvit.preset``,
``absvit.run=NAME``, from which ``absvit tables --from-mlflow`` rebuilds the table.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from absvit.errors import DatasetError, UsageError
from absvit.io import atomic_path
from absvit.tracking import Tracker, run_tags

# Table 2 / 3 column -> (suite file, number in it); every comparison keeps them all, Table 2 shows the paper's five
COLUMNS = {"clean": ("clean", "top1"), "in_c": ("imagenet-c", "mce"), "in_a": ("imagenet-a", "top1"),
           "in_r": ("imagenet-r", "top1"), "in_sk": ("imagenet-sketch", "top1"), "fgsm": ("fgsm", "top1"),
           "pgd": ("pgd", "top1")}
# comparison name -> its arms, in table order
COMPARISONS = {"lvar": ("without_lvar", "with_lvar"), "robustness": ("vit", "absvit")}


def arm_row(eval_dir) -> dict:
    """The model (timm name, from the `absvit evaluate` JSONs), its training seed (the checkpoint's; 0 for
    a released file that records none) and the five numbers of one eval folder."""
    eval_dir = Path(eval_dir)
    row, models, seeds, spaces, skipped = {}, set(), set(), set(), False
    for column, (suite, key) in COLUMNS.items():
        path = eval_dir / f"{suite}.json"
        if not path.is_file():
            raise DatasetError(f"{path}: missing result of suite {suite!r} (expected `absvit evaluate` output)")
        result = json.loads(path.read_text())
        row[column] = float(result[key])
        models.add(result.get("model"))
        seeds.add(result.get("seed") or 0)
        spaces.add(result.get("label_space", 0))
        skipped = skipped or bool(result.get("skipped_classes"))
    if len(models) != 1 or None in models:
        raise DatasetError(f"{eval_dir}: expected the results of one model (the `model` field of each <suite>.json), "
                           f"found {sorted(map(str, models))}")
    if len(seeds) != 1:
        raise DatasetError(f"{eval_dir}: expected the results of one training seed, found seeds {sorted(seeds)}")
    # label_space: the classes the model was evaluated in (0: not recorded); skipped: some set held other classes
    return {"seed": int(seeds.pop()), "model": models.pop(), **row, "label_space": max(spaces), "skipped": skipped}


def summarize(name: str, arms: dict[str, list[tuple[str, Path]]], out_csv, *, label: str, preset: str,
              tracking_uri: str | None = None, track: bool = True) -> pd.DataFrame:
    """``arms``: arm -> [(pretraining run name, its eval folder of one seed), ...], for each arm of
    ``COMPARISONS[name]``."""
    expected = COMPARISONS[name]
    if sorted(arms) != sorted(expected):
        raise UsageError(f"ablation {name!r} compares arms {list(expected)}, got {sorted(arms)}")
    frame = pd.DataFrame([{"arm": arm, "run": run, **arm_row(eval_dir)} for arm in expected for run, eval_dir in arms[arm]])
    for arm, rows in frame.groupby("arm"):
        if rows.seed.duplicated().any():
            raise UsageError(f"ablation {name!r}, arm {arm}: two eval folders of the same seed ({sorted(rows.seed)})")
    with atomic_path(out_csv) as tmp:
        frame.to_csv(tmp, index=False)
    per_arm = frame.groupby("arm", sort=False)
    params = {"name": name, "label": label, "preset": preset,
              **{f"run.{arm}": " / ".join(sorted(set(rows.run))) for arm, rows in per_arm},
              **{f"model.{arm}": " / ".join(sorted(set(rows.model))) for arm, rows in per_arm},
              **{f"seeds.{arm}": ",".join(map(str, rows.seed)) for arm, rows in per_arm},
              **{f"label_space.{arm}": int(rows.label_space.max()) for arm, rows in per_arm},
              **{f"skipped.{arm}": bool(rows.skipped.any()) for arm, rows in per_arm}}
    tracker = Tracker(f"ablation/{preset}/{name}", uri=tracking_uri, enabled=track, params=params,
                      tags=run_tags("ablation", preset, name))
    tracker.log_metrics({f"{row.arm}.s{row.seed}.{c}": getattr(row, c) for row in frame.itertuples() for c in COLUMNS})
    tracker.log_metrics({f"{arm}.{c}": rows[c].mean() for arm, rows in per_arm for c in COLUMNS})  # the table's cells
    tracker.log_artifact(out_csv)
    tracker.finish()
    return frame
