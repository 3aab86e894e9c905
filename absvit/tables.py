"""Tables 1-3 as booktabs LaTeX (plus CSV, Markdown and a reproduction report).

- Table 1: segmentation mIoU per backbone (from `absvit segment` result files);
- Table 2: the L_var ablation (``lvar.csv`` of `absvit ablation --name lvar`);
- Table 3: ViT vs AbSViT robustness (``robustness.csv`` of `absvit ablation --name robustness`).

With ``--from-mlflow`` the same numbers are read back from the tracking store: both paths build the
same DataFrames and so write byte-identical files. Row labels name the models that produced the
numbers (``display_name``): the paper's names for the paper's models, the timm name for any other
(the embedded default's tiny models never pass for ViT-B), plus "(random init)" for a
segmentation backbone that started from no weights. The report sets a number beside the paper's
only where the model (and, for Table 1, its ImageNet initialisation) is the paper's.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from absvit.ablation import COLUMNS, COMPARISONS
from absvit.errors import TrackingError
from absvit.io import atomic_path

SIZES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
RANDOM_INIT = " (random init)"

# The paper's numbers, keyed by the timm model they belong to.
PAPER_TABLE1 = pd.DataFrame(
    {"voc": [77.1, 80.1, 81.3], "cityscapes": [78.7, 75.3, 76.8], "ade20k": [42.9, 45.2, 47.2]},
    index=pd.Index(["resnet101", "vit_base_patch16_224", "absvit_base_patch16_224"], name="model"))
PAPER_TABLE2 = pd.DataFrame(
    [{"arm": "without_lvar", "clean": 73.1, "in_c": 69.0, "in_a": 9.5, "in_r": 33.5, "in_sk": 20.8},
     {"arm": "with_lvar", "clean": 74.1, "in_c": 66.7, "in_a": 10.1, "in_r": 34.9, "in_sk": 22.6}]).set_index("arm")
PAPER_TABLE2_MODEL = "absvit_tiny_patch16_224"  # its with-L_var row is AbSViT-Ti's released 74.1 / 66.7
# Released ViT / AbSViT results (ImageNet top-1, IN-C mCE). The appendix has no ViT vs AbSViT
# IN-A / IN-R / IN-Sketch numbers: those stay empty ("--").
PAPER_ROBUSTNESS = pd.DataFrame(
    {"clean": [72.5, 74.1, 80.1, 80.7, 80.8, 81.0], "in_c": [71.1, 66.7, 54.6, 51.6, 49.3, 48.3]},
    index=pd.Index([f"{kind}_{size}_patch16_224" for size in ("tiny", "small", "base") for kind in ("vit", "absvit")],
                   name="model")).reindex(columns=list(COLUMNS))

ROBUST_HEAD = {"clean": "Clean", "in_c": r"IN-C ($\downarrow$)", "in_a": "IN-A", "in_r": "IN-R", "in_sk": "IN-SK"}
T1_HEAD = {"voc": "PASCAL VOC", "cityscapes": "Cityscapes", "ade20k": "ADE20K"}
T1_KINDS = ("resnet", "vit", "absvit")  # Table 1's rows (segment --backbone kinds), in the paper's order


def display_name(model: str) -> str:
    """The paper's name of a timm model (absvit_base_patch16_224 -> AbSViT-B, resnet101 -> ResNet-101),
    or the timm name itself for any other model (absvit_pico_patch8_64, resnet10t)."""
    m = re.fullmatch(r"(absvit|vit)_(tiny|small|base|large|huge)_patch16_224", model)
    if m:
        return f"{'AbSViT' if m[1] == 'absvit' else 'ViT'}-{SIZES[m[2]]}"
    m = re.fullmatch(r"resnet(\d+)", model)
    return f"ResNet-{m[1]}" if m else model


def _random_init(checkpoint) -> bool:
    """`absvit segment` records a backbone without starting weights as checkpoint None ("None" as text)."""
    return checkpoint is None or (isinstance(checkpoint, float) and pd.isna(checkpoint)) or str(checkpoint) in ("None", "")


def _tex(text: str) -> str:
    return re.sub(r"([_&%#])", r"\\\1", text)


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _caption(base: str, label: str | None) -> str:
    return base if not label else f"{base} {label}" + ("" if label.endswith(".") else ".")


def _cells(numbers: pd.DataFrame) -> pd.DataFrame:
    return numbers.map(lambda v: "--" if pd.isna(v) else f"{v:.1f}")


def _write_table(out: Path, stem: str, tex: pd.DataFrame, pretty: pd.DataFrame, *, caption: str, ref: str,
                 column_format: str, label: str | None) -> None:
    """``tex``: the LaTeX cells (its columns are the header); ``pretty``: the numbers for CSV / Markdown."""
    latex = tex.style.hide(axis="index").to_latex(hrules=True, position="t", position_float="centering",
                                                  column_format=column_format, caption=_caption(caption, label), label=ref)
    _write(out / f"{stem}.tex", latex)
    _write(out / f"{stem}.csv", pretty.round(2).to_csv())
    _write(out / f"{stem}.md", (f"{label}\n\n" if label else "") + _markdown(pretty.round(1)) + "\n")


def _comparison(ours: pd.DataFrame, labels: dict, paper: dict, heads: dict) -> pd.DataFrame:
    """The report's long form: row label, column, our number, the paper's (NaN where not comparable)."""
    return pd.DataFrame([{"row": labels[r], "column": heads[c], "ours": ours.loc[r, c],
                          "paper": paper[r][c] if paper.get(r) is not None else float("nan")}
                         for r in ours.index for c in ours.columns])


def table1(frame: pd.DataFrame, out_dir, *, label: str | None = None) -> pd.DataFrame:
    """``frame``: one row per `absvit segment` result: backbone (resnet / vit / absvit), model, checkpoint
    (None / "None": random init), dataset (voc / cityscapes / ade20k), miou. Rows without results are left out."""
    t = frame.pivot(index="backbone", columns="dataset", values="miou").reindex(columns=list(T1_HEAD))
    t = t.reindex([k for k in T1_KINDS if k in t.index])
    labels, paper = {}, {}
    for kind in t.index:
        runs = frame[frame.backbone == kind]
        models, random = sorted(set(runs.model)), any(map(_random_init, runs.checkpoint))
        labels[kind] = " / ".join(map(display_name, models)) + (RANDOM_INIT if random else "")
        comparable = len(models) == 1 and models[0] in PAPER_TABLE1.index and not random
        paper[kind] = PAPER_TABLE1.loc[models[0]] if comparable else None
    cells = _cells(t)
    if {"vit", "absvit"} <= set(t.index):  # the paper's "(+x.x)" of AbSViT over ViT
        gain = t.loc["absvit"] - t.loc["vit"]
        cells.loc["absvit"] = [c if pd.isna(g) else f"{c} ({g:+.1f})" for c, g in zip(cells.loc["absvit"], gain)]
    tex = cells.rename(columns=T1_HEAD)
    tex.insert(0, "Model", [_tex(labels[k]) for k in t.index])
    pretty = t.rename(index=labels, columns=T1_HEAD).rename_axis(index="Model", columns=None)
    _write_table(Path(out_dir), "table1", tex, pretty, caption="Semantic segmentation results on three datasets (mIoU).",
                 ref="tab:segmentation", column_format="lccc", label=label)
    return _comparison(t, labels, paper, T1_HEAD)


def _arms(frame: pd.DataFrame, name: str) -> tuple[pd.DataFrame, pd.Series]:
    """An `absvit ablation` frame's numbers (index: arm, in table order) and models."""
    t = frame.set_index("arm").loc[list(COMPARISONS[name])]
    return t[list(COLUMNS)].astype(float), t["model"]


def table2(frame: pd.DataFrame, out_dir, *, label: str | None = None) -> pd.DataFrame:
    """``frame``: `absvit ablation --name lvar` rows: arm (without_lvar / with_lvar), run, model and COLUMNS."""
    t, models = _arms(frame, "lvar")
    tex = _cells(t).rename(columns=ROBUST_HEAD)
    tex.insert(0, "", [_tex(display_name(m)) for m in models])
    tex.insert(1, r"$\mathcal{L}_{var}$", [r"$\times$", r"\checkmark"])
    labels = {arm: f"{display_name(models[arm])} {mark} L_var" for arm, mark in zip(t.index, ("w/o", "w/"))}
    pretty = t.rename(index=labels, columns=ROBUST_HEAD).rename_axis(index="Model")
    _write_table(Path(out_dir), "table2", tex, pretty, caption=r"Ablation on the variational loss $\mathcal{L}_{var}$.",
                 ref="tab:lvar", column_format="llccccc", label=label)
    paper = {arm: PAPER_TABLE2.loc[arm] if models[arm] == PAPER_TABLE2_MODEL else None for arm in t.index}
    return _comparison(t, labels, paper, ROBUST_HEAD)


def table3(frame: pd.DataFrame, out_dir, *, label: str | None = None) -> pd.DataFrame:
    """``frame``: `absvit ablation --name robustness` rows: arm (vit / absvit), run, model and COLUMNS."""
    t, models = _arms(frame, "robustness")
    labels = {arm: display_name(models[arm]) for arm in t.index}
    tex = _cells(t).rename(columns=ROBUST_HEAD)
    tex.insert(0, "Model", [_tex(labels[arm]) for arm in t.index])
    pretty = t.rename(index=labels, columns=ROBUST_HEAD).rename_axis(index="Model")
    _write_table(Path(out_dir), "table3", tex, pretty,
                 caption="Robustness of ViT and AbSViT: ImageNet top-1 (Clean), ImageNet-C mCE (IN-C, lower is better), "
                         "ImageNet-A, -R and -Sketch top-1.",
                 ref="tab:robustness", column_format="lccccc", label=label)
    paper = {arm: PAPER_ROBUSTNESS.loc[models[arm]] if models[arm] in PAPER_ROBUSTNESS.index else None for arm in t.index}
    return _comparison(t, labels, paper, ROBUST_HEAD)


def report(out_dir, *, t1: pd.DataFrame | None = None, t2: pd.DataFrame | None = None, t3: pd.DataFrame | None = None,
           label: str | None = None) -> None:
    """Each reproduced number beside the paper's, with the difference (the table functions' return values)."""
    parts = ["# Reproduction report", ""] + ([label, ""] if label else [])
    parts += ["The paper column holds the paper's number only where the model is the paper's (Table 1: with its "
              "ImageNet initialisation); elsewhere it says --.", ""]
    t3_note = ("Paper: the released ViT / AbSViT ImageNet top-1 and IN-C mCE (lower is better); the appendix has no "
               "ViT vs AbSViT IN-A / IN-R / IN-Sketch numbers.")
    for title, comparison, note in (("Table 1 (segmentation, mIoU)", t1, None), ("Table 2 (L_var ablation)", t2, None),
                                    ("Table 3 (ViT vs AbSViT robustness)", t3, t3_note)):
        if comparison is None:
            continue
        long = comparison.assign(difference=comparison.ours - comparison.paper)
        parts += [f"## {title}", "", _markdown(long.round(2), index=False), ""] + ([note, ""] if note else [])
    _write(Path(out_dir) / "report.md", "\n".join(parts))


def _markdown(frame: pd.DataFrame, index: bool = True) -> str:
    """A GitHub table without the optional tabulate dependency."""
    frame = frame.reset_index() if index else frame
    cells = [[str(c) for c in frame.columns]] + [["--" if pd.isna(v) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "---|" * len(frame.columns)] + lines[1:])


def segmentation_frame(result_files) -> pd.DataFrame:
    """Table 1's long form (backbone kind, model, checkpoint, dataset, miou) from `absvit segment` result files."""
    rows = []
    for path in result_files:
        r = json.loads(Path(path).read_text())
        rows.append({"backbone": r["backbone"], "model": r["model"], "checkpoint": str(r.get("checkpoint")),
                     "dataset": r["dataset"], "miou": float(r["miou"])})
    return pd.DataFrame(rows, columns=["backbone", "model", "checkpoint", "dataset", "miou"])


def _finished_runs(uri: str, preset: str, where: str, max_results: int = 1000) -> list:
    """Finished runs of ``preset`` matching ``where`` (an MLflow filter), newest first."""
    from mlflow.tracking import MlflowClient

    from absvit.tracking import EXPERIMENT

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else client.search_runs(
        [exp.experiment_id], f"{where} and tags.`absvit.preset` = '{preset}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=max_results)


def segmentation_from_mlflow(uri: str, preset: str) -> pd.DataFrame | None:
    """The newest finished segmentation run of each (backbone, dataset) of ``preset``; None if there are none."""
    latest = {}
    for run in _finished_runs(uri, preset, "tags.`absvit.stage` = 'segment'"):
        latest.setdefault((run.data.tags["absvit.backbone"], run.data.tags["absvit.dataset"]), run)
    if not latest:
        return None
    return pd.DataFrame([{"backbone": b, "model": run.data.params["model"], "checkpoint": run.data.params["checkpoint"],
                          "dataset": d, "miou": run.data.metrics["miou"]} for (b, d), run in latest.items()])


def ablation_from_mlflow(uri: str, preset: str, name: str = "lvar", *, required: bool = True) -> tuple[pd.DataFrame, str] | None:
    """The rows and caption label of the newest finished `absvit ablation --name NAME` run of ``preset``
    (None if there is none and not ``required``)."""
    runs = _finished_runs(uri, preset, f"tags.`absvit.stage` = 'ablation' and tags.`absvit.run` = '{name}'", max_results=1)
    if not runs:
        if not required:
            return None
        raise TrackingError(f"no finished ablation run for preset {preset!r} in the MLflow store {uri} "
                            f"(tags absvit.stage=ablation, absvit.run={name})")
    p, m = runs[0].data.params, runs[0].data.metrics
    rows = [{"arm": arm, "run": p[f"run.{arm}"], "model": p[f"model.{arm}"], **{c: m[f"{arm}.{c}"] for c in COLUMNS}}
            for arm in COMPARISONS[name]]
    return pd.DataFrame(rows), p["label"]
