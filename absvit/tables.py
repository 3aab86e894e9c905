"""Tables 1 and 2 as booktabs LaTeX (plus CSV, Markdown and a reproduction report).

Inputs are the stage summaries (``lvar.csv``, later the segmentation summary), or, with
``--from-mlflow``, the same numbers read back from the tracking store: both paths build the
same DataFrames and so write byte-identical files.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from absvit.ablation import ARMS, COLUMNS
from absvit.errors import TrackingError
from absvit.io import atomic_path

PAPER_TABLE2 = pd.DataFrame(
    [{"arm": "without_lvar", "clean": 73.1, "in_c": 69.0, "in_a": 9.5, "in_r": 33.5, "in_sk": 20.8},
     {"arm": "with_lvar", "clean": 74.1, "in_c": 66.7, "in_a": 10.1, "in_r": 34.9, "in_sk": 22.6}]).set_index("arm")
PAPER_TABLE1 = pd.DataFrame(
    {"voc": [77.1, 80.1, 81.3], "cityscapes": [78.7, 75.3, 76.8], "ade20k": [42.9, 45.2, 47.2]},
    index=pd.Index(["resnet101", "vit", "absvit"], name="backbone"))
T2_HEAD = {"clean": "Clean", "in_c": r"IN-C ($\downarrow$)", "in_a": "IN-A", "in_r": "IN-R", "in_sk": "IN-SK"}
T1_HEAD = {"voc": "PASCAL VOC", "cityscapes": "Cityscapes", "ade20k": "ADE20K"}
T1_ROWS = {"resnet101": "ResNet-101", "vit": "ViT-B", "absvit": "AbSViT-B"}


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _caption(base: str, label: str | None) -> str:
    return base if not label else f"{base} {label}."


def table2(frame: pd.DataFrame, out_dir, *, label: str | None = None) -> pd.DataFrame:
    """``frame``: one row per arm (``without_lvar``, ``with_lvar``) with the COLUMNS numbers."""
    t = frame.set_index("arm").loc[list(ARMS), list(COLUMNS)].astype(float)
    out = Path(out_dir)
    lines = [r"\begin{table}[t]", r"\centering",
             r"\caption{" + _caption(r"Ablation on the variational loss $\mathcal{L}_{var}$.", label) + "}",
             r"\label{tab:lvar}", r"\begin{tabular}{llccccc}", r"\toprule",
             r" & $\mathcal{L}_{var}$ & " + " & ".join(T2_HEAD.values()) + r" \\", r"\midrule"]
    for arm, mark in zip(ARMS, (r"$\times$", r"\checkmark")):
        lines.append(f"AbSViT & {mark} & " + " & ".join(f"{t.loc[arm, c]:.1f}" for c in COLUMNS) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    _write(out / "table2.tex", "\n".join(lines) + "\n")
    pretty = t.rename(columns=T2_HEAD).rename(index={"without_lvar": "AbSViT w/o L_var", "with_lvar": "AbSViT w/ L_var"})
    _write(out / "table2.csv", pretty.round(2).to_csv())
    _write(out / "table2.md", (f"{label}\n\n" if label else "") + _markdown(pretty.round(1)) + "\n")
    return t


def table1(frame: pd.DataFrame, out_dir, *, label: str | None = None) -> pd.DataFrame:
    """``frame``: columns backbone (resnet101 / vit / absvit), dataset (voc / cityscapes / ade20k), miou."""
    t = frame.pivot(index="backbone", columns="dataset", values="miou").reindex(index=list(T1_ROWS), columns=list(T1_HEAD))
    out = Path(out_dir)
    lines = [r"\begin{table}[t]", r"\centering",
             r"\caption{" + _caption("Semantic segmentation results on three datasets (mIoU).", label) + "}",
             r"\label{tab:segmentation}", r"\begin{tabular}{lccc}", r"\toprule",
             "Model & " + " & ".join(T1_HEAD.values()) + r" \\", r"\midrule"]
    for backbone, name in T1_ROWS.items():
        cells = []
        for d in T1_HEAD:
            v = t.loc[backbone, d]
            cell = "--" if pd.isna(v) else f"{v:.1f}"
            if backbone == "absvit" and not pd.isna(v) and not pd.isna(t.loc["vit", d]):
                cell += f" ({v - t.loc['vit', d]:+.1f})"
            cells.append(cell)
        lines.append(f"{name} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    _write(out / "table1.tex", "\n".join(lines) + "\n")
    pretty = t.rename(index=T1_ROWS, columns=T1_HEAD)
    _write(out / "table1.csv", pretty.round(2).to_csv())
    _write(out / "table1.md", (f"{label}\n\n" if label else "") + _markdown(pretty.round(1)) + "\n")
    return t


def report(out_dir, *, t2: pd.DataFrame | None = None, t1: pd.DataFrame | None = None, label: str | None = None) -> None:
    """Each reproduced number beside the paper's, with the difference."""
    parts = ["# Reproduction report", ""] + ([label, ""] if label else [])
    for title, ours, paper, rows, heads in (("Table 2 (L_var ablation)", t2, PAPER_TABLE2, None, T2_HEAD),
                                            ("Table 1 (segmentation, mIoU)", t1, PAPER_TABLE1, T1_ROWS, T1_HEAD)):
        if ours is None:
            continue
        long = []
        for r in ours.index:
            for c in ours.columns:
                long.append({"row": rows[r] if rows else r, "column": heads[c], "ours": ours.loc[r, c],
                             "paper": paper.loc[r, c], "difference": ours.loc[r, c] - paper.loc[r, c]})
        parts += [f"## {title}", "", _markdown(pd.DataFrame(long).round(2), index=False), ""]
    _write(Path(out_dir) / "report.md", "\n".join(parts))


def _markdown(frame: pd.DataFrame, index: bool = True) -> str:
    """A GitHub table without the optional tabulate dependency."""
    frame = frame.reset_index() if index else frame
    cells = [[str(c) for c in frame.columns]] + [["--" if pd.isna(v) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "---|" * len(frame.columns)] + lines[1:])


ROW_OF_KIND = {"resnet": "resnet101", "vit": "vit", "absvit": "absvit"}  # backbone kind -> Table 1 row


def segmentation_frame(result_files) -> pd.DataFrame:
    """Table 1's long form (backbone row, dataset, miou) from `absvit segment` result files."""
    rows = []
    for path in result_files:
        r = json.loads(Path(path).read_text())
        rows.append({"backbone": ROW_OF_KIND[r["backbone"]], "dataset": r["dataset"], "miou": float(r["miou"])})
    return pd.DataFrame(rows, columns=["backbone", "dataset", "miou"])


def segmentation_from_mlflow(uri: str, preset: str) -> pd.DataFrame | None:
    """The newest finished segmentation run of each (backbone, dataset) of ``preset``; None if there are none."""
    from mlflow.tracking import MlflowClient

    from absvit.tracking import EXPERIMENT

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], f"tags.`absvit.stage` = 'segment' and tags.`absvit.preset` = '{preset}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"])
    latest = {}
    for run in runs:
        key = (ROW_OF_KIND[run.data.tags["absvit.backbone"]], run.data.tags["absvit.dataset"])
        latest.setdefault(key, run.data.metrics["miou"])
    if not latest:
        return None
    return pd.DataFrame([{"backbone": b, "dataset": d, "miou": v} for (b, d), v in latest.items()])


def ablation_from_mlflow(uri: str, preset: str) -> tuple[pd.DataFrame, str]:
    """Table 2's rows and label from the newest finished ablation run of ``preset``."""
    from mlflow.tracking import MlflowClient

    from absvit.tracking import EXPERIMENT

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], f"tags.`absvit.stage` = 'ablation' and tags.`absvit.preset` = '{preset}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TrackingError(f"no finished ablation run for preset {preset!r} in the MLflow store {uri}")
    run = runs[0]
    rows = [{"arm": arm, "run": run.data.params[f"run.{arm}"], **{c: run.data.metrics[f"{arm}.{c}"] for c in COLUMNS}} for arm in ARMS]
    return pd.DataFrame(rows), run.data.params["label"]
