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
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from absvit import stats
from absvit.ablation import COLUMNS, COMPARISONS
from absvit.errors import TrackingError
from absvit.formats import display_name, markdown_table, tex_escape
from absvit.io import write_text
from absvit.tracking import finished_runs
from absvit.released import RELEASED

RANDOM_INIT = " (random init)"

# The paper's numbers, keyed by the timm model they belong to.
PAPER_TABLE1 = pd.DataFrame(
    {"voc": [77.1, 80.1, 81.3], "cityscapes": [78.7, 75.3, 76.8], "ade20k": [42.9, 45.2, 47.2]},
    index=pd.Index(["resnet101", "vit_base_patch16_224", "absvit_base_patch16_224"], name="model"))
PAPER_TABLE2 = pd.DataFrame(
    [{"arm": "without_lvar", "clean": 73.1, "in_c": 69.0, "in_a": 9.5, "in_r": 33.5, "in_sk": 20.8},
     {"arm": "with_lvar", "clean": 74.1, "in_c": 66.7, "in_a": 10.1, "in_r": 34.9, "in_sk": 22.6}]).set_index("arm")
PAPER_TABLE2_MODEL = "absvit_tiny_patch16_224"  # its with-L_var row is AbSViT-Ti's released 74.1 / 66.7
# Released ViT / AbSViT results (ImageNet top-1, IN-C mCE: absvit.released). The appendix has no ViT vs AbSViT
# IN-A / IN-R / IN-Sketch numbers: those stay empty ("--").
PAPER_ROBUSTNESS = pd.DataFrame(
    {"clean": [r.top1 for r in RELEASED.values() if r.top1], "in_c": [r.mce for r in RELEASED.values() if r.top1]},
    index=pd.Index([m for m, r in RELEASED.items() if r.top1], name="model")).reindex(columns=list(COLUMNS))

ROBUST_HEAD = {"clean": "Clean", "in_c": r"IN-C ($\downarrow$)", "in_a": "IN-A", "in_r": "IN-R", "in_sk": "IN-SK",
               "fgsm": "FGSM", "pgd": "PGD"}
TABLE2_COLUMNS = ("clean", "in_c", "in_a", "in_r", "in_sk")  # the paper's Table 2; Table 3 adds the attacks
T1_HEAD = {"voc": "PASCAL VOC", "cityscapes": "Cityscapes", "ade20k": "ADE20K"}
T1_KINDS = ("resnet", "vit", "absvit")  # Table 1's rows (segment --backbone kinds), in the paper's order


def _random_init(checkpoint) -> bool:
    """`absvit segment` records a backbone without starting weights as checkpoint None ("None" as text)."""
    return checkpoint is None or (isinstance(checkpoint, float) and pd.isna(checkpoint)) or str(checkpoint) in ("None", "")


def _caption(base: str, label: str | None) -> str:
    """The LaTeX caption: ``base`` (LaTeX already) and the preset's label (plain text, escaped)."""
    return base if not label else f"{base} {tex_escape(label)}" + ("" if label.endswith(".") else ".")


@dataclass
class Spread:
    """A table's numbers over seeds: per row (index) and column, the mean, sample std and n."""

    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    digits: dict = field(default_factory=dict)  # column -> decimals (default 1)

    @classmethod
    def of(cls, wide: pd.DataFrame, rows: str, columns: list[str], digits: dict | None = None) -> "Spread":
        """``wide``: one row per (``rows`` value, seed), a column each."""
        grouped = wide.groupby(rows, sort=False)[columns]
        return cls(grouped.mean(), grouped.std(ddof=1), grouped.count(), digits or {})

    @property
    def seeded(self) -> bool:
        return bool((self.n > 1).any().any())

    def cells(self, *, tex: bool) -> pd.DataFrame:
        return pd.DataFrame([[stats.cell(self.mean.loc[r, c], self.std.loc[r, c], self.n.loc[r, c], tex=tex,
                                         digits=self.digits.get(c, 1))
                              for c in self.mean.columns] for r in self.mean.index],
                            index=self.mean.index, columns=self.mean.columns)

    def seeds(self) -> pd.Series:
        """n of each row: its largest per-cell count (a missing result shows as --)."""
        return self.n.max(axis=1)


@dataclass
class Reported:
    """What a table function hands the report: its numbers beside the paper's, and its seed comparisons."""

    comparison: pd.DataFrame  # row, column, ours (mean), paper; + std, n over seeds
    significance: pd.DataFrame | None = None  # stats.compare rows of the table's pair
    note: str | None = None  # what the report says under the table (default: the table's standing note)


def _with_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """Results written before seeds existed are one seed (0)."""
    return frame if "seed" in frame else frame.assign(seed=0)


def write_table(out: Path, stem: str, spread: Spread, labels: dict, heads: dict, first: dict, *,
                 caption: str, ref: str, column_format: str, label: str | None, cells: pd.DataFrame | None = None,
                 tex_heads: dict | None = None, tex_columns: list[str] | None = None) -> None:
    """``first``: the leading LaTeX column(s) (header -> values per row); ``cells``: the LaTeX number cells
    (default: mean, +- std over several seeds); ``tex_heads``: LaTeX headers where they differ from ``heads``;
    ``tex_columns``: the columns the LaTeX table keeps (default all). CSV: means, plus ``<column> std`` and ``n``
    over several seeds."""
    tex = spread.cells(tex=True) if cells is None else cells
    tex = tex[tex_columns] if tex_columns else tex
    tex = tex.rename(columns={**heads, **(tex_heads or {})})
    for i, (head, values) in enumerate(first.items()):
        tex.insert(i, head, values)
    seeded = spread.seeded
    if seeded:
        tex["n"] = spread.seeds().astype(int).astype(str).tolist()
        column_format += "c"
    latex = tex.style.hide(axis="index").to_latex(hrules=True, position="t", position_float="centering",
                                                  column_format=column_format, caption=_caption(caption, label), label=ref)
    write_text(out / f"{stem}.tex", f"% {stem}: \\input this into a document whose preamble has \\usepackage{{booktabs}} "
                                "(no other package needed).\n" + latex)
    csv = spread.mean.rename(index=labels, columns=heads)
    md = spread.cells(tex=False).rename(index=labels, columns=heads)
    if seeded:
        for c in spread.mean.columns:
            csv[f"{heads[c]} std"] = spread.std[c].to_numpy()
        csv["n"] = md["n"] = spread.seeds().astype(int).to_numpy()
    write_text(out / f"{stem}.csv", csv.rename_axis(index="Model", columns=None).round(4).to_csv())
    write_text(out / f"{stem}.md", (f"{label}\n\n" if label else "") + markdown_table(md.rename_axis(index="Model", columns=None)) + "\n")


def paper_comparison(spread: Spread, labels: dict, paper: dict, heads: dict) -> pd.DataFrame:
    """The report's long form: row label, column, our number, the paper's (NaN where not comparable)
    (+ std and n over several seeds)."""
    ours = spread.mean
    rows = [{"row": labels[r], "column": heads[c], "ours": ours.loc[r, c],
             **({"std": spread.std.loc[r, c], "n": int(spread.n.loc[r, c])} if spread.seeded else {}),
             "paper": paper[r][c] if paper.get(r) is not None else float("nan")}
            for r in ours.index for c in ours.columns]
    return pd.DataFrame(rows)


def table1(frame: pd.DataFrame, out_dir, *, label: str | None = None) -> Reported:
    """``frame``: one row per `absvit segment` result: backbone (resnet / vit / absvit), model, checkpoint
    (None / "None": random init), dataset (voc / cityscapes / ade20k), miou, seed (optional). Rows without
    results are left out; several seeds of a cell give mean +- std."""
    frame = _with_seed(frame)
    wide = frame.pivot_table(index=["backbone", "seed"], columns="dataset", values="miou").reset_index()
    wide = wide.reindex(columns=["backbone", "seed", *T1_HEAD])
    order = [k for k in T1_KINDS if k in set(wide.backbone)]
    wide = wide.set_index("backbone").loc[order].reset_index()
    spread = Spread.of(wide, "backbone", list(T1_HEAD))
    labels, paper = {}, {}
    for kind in spread.mean.index:
        runs = frame[frame.backbone == kind]
        models, random = sorted(set(runs.model)), any(map(_random_init, runs.checkpoint))
        labels[kind] = " / ".join(map(display_name, models)) + (RANDOM_INIT if random else "")
        comparable = len(models) == 1 and models[0] in PAPER_TABLE1.index and not random
        paper[kind] = PAPER_TABLE1.loc[models[0]] if comparable else None
    cells = spread.cells(tex=True)
    significance = None
    if {"vit", "absvit"} <= set(spread.mean.index):  # the paper's "(+x.x)" of AbSViT over ViT
        gain = spread.mean.loc["absvit"] - spread.mean.loc["vit"]
        cells.loc["absvit"] = [c if pd.isna(g) else f"{c} ({g:+.1f})" for c, g in zip(cells.loc["absvit"], gain)]
        significance = stats.compare(wide, "backbone", "vit", "absvit", T1_HEAD,
                                     pair=f"{labels['absvit']} - {labels['vit']}")
    write_table(Path(out_dir), "table1", spread, labels, T1_HEAD, {"Model": [tex_escape(labels[k]) for k in spread.mean.index]},
                 caption="Semantic segmentation results on three datasets (mIoU).", ref="tab:segmentation",
                 column_format="lccc", label=label, cells=cells)
    return Reported(paper_comparison(spread, labels, paper, T1_HEAD), significance)


def _arms(frame: pd.DataFrame, name: str, columns) -> tuple[pd.DataFrame, Spread, pd.Series]:
    """An `absvit ablation` frame (one row per arm and seed) in table order, its spread over ``columns``, and each
    arm's model."""
    frame = _with_seed(frame)
    arms = list(COMPARISONS[name])
    frame = frame.set_index("arm").loc[arms].reset_index()
    frame[list(columns)] = frame[list(columns)].astype(float)
    models = frame.groupby("arm", sort=False)["model"].agg(lambda m: " / ".join(sorted(set(m))))
    return frame, Spread.of(frame, "arm", list(columns)), models


def _label_space_note(frame: pd.DataFrame) -> str:
    """The caption's sentence for runs of fewer classes than the sets hold (else nothing)."""
    if "skipped" not in frame or not frame.skipped.astype(bool).any():
        return ""
    return (f" Evaluated in the runs' label space of {int(frame.label_space.max())} classes: the clean, IN-C and "
            "IN-Sketch images of those classes, and IN-A / IN-R on the classes they share with it.")


def table2(frame: pd.DataFrame, out_dir, *, label: str | None = None) -> Reported:
    """``frame``: `absvit ablation --name lvar` rows: arm (without_lvar / with_lvar), run, model, seed and COLUMNS."""
    long, spread, models = _arms(frame, "lvar", TABLE2_COLUMNS)
    heads = {c: ROBUST_HEAD[c] for c in TABLE2_COLUMNS}
    labels = {arm: f"{display_name(models[arm])} {mark} L_var" for arm, mark in zip(spread.mean.index, ("w/o", "w/"))}
    # $\times$ / $\surd$: the paper's cross and tick in base LaTeX (\checkmark would need amssymb)
    first = {"": [tex_escape(display_name(m)) for m in models], r"$\mathcal{L}_{var}$": [r"$\times$", r"$\surd$"]}
    write_table(Path(out_dir), "table2", spread, labels, heads, first,
                 caption=r"Ablation on the variational loss $\mathcal{L}_{var}$." + _label_space_note(long), ref="tab:lvar",
                 column_format="llccccc", label=label)
    paper = {arm: PAPER_TABLE2.loc[arm] if models[arm] == PAPER_TABLE2_MODEL else None for arm in spread.mean.index}
    significance = stats.compare(long, "arm", "without_lvar", "with_lvar", heads,
                                 pair=f"{labels['with_lvar']} - {labels['without_lvar']}")
    return Reported(paper_comparison(spread, labels, paper, heads), significance)


def table3(frame: pd.DataFrame, out_dir, *, label: str | None = None) -> Reported:
    """``frame``: `absvit ablation --name robustness` rows: arm (vit / absvit), run, model, seed and COLUMNS."""
    long, spread, models = _arms(frame, "robustness", COLUMNS)
    labels = {arm: display_name(models[arm]) for arm in spread.mean.index}
    write_table(Path(out_dir), "table3", spread, labels, ROBUST_HEAD, {"Model": [tex_escape(labels[a]) for a in spread.mean.index]},
                 caption="Robustness of ViT and AbSViT: ImageNet top-1 (Clean), ImageNet-C mCE (IN-C, lower is better), "
                         "ImageNet-A, -R and -Sketch top-1, and top-1 under FGSM and 5-step PGD attacks of the clean "
                         "images (epsilon 1/255)." + _label_space_note(long),
                 ref="tab:robustness", column_format="l" + "c" * len(COLUMNS), label=label)
    paper = {arm: PAPER_ROBUSTNESS.loc[models[arm]] if models[arm] in PAPER_ROBUSTNESS.index else None
             for arm in spread.mean.index}
    significance = stats.compare(long, "arm", "vit", "absvit", ROBUST_HEAD, pair=f"{labels['absvit']} - {labels['vit']}")
    return Reported(paper_comparison(spread, labels, paper, ROBUST_HEAD), significance)


def report(out_dir, *, t1: Reported | None = None, t2: Reported | None = None, t3: Reported | None = None,
           t4: Reported | None = None, label: str | None = None, sections: list[str] = ()) -> None:
    """Each reproduced number beside the paper's, with the difference; each compared pair's difference
    against the seed spread; then any further ``sections`` (Markdown: figures, cost)."""
    parts = ["# Reproduction report", ""] + ([label, ""] if label else [])
    parts += ["The paper column holds the paper's number only where the model is the paper's (Table 1: with its "
              "ImageNet initialisation); elsewhere it says --.", ""]
    t3_note = ("Paper: the released ViT / AbSViT ImageNet top-1 and IN-C mCE (lower is better); the appendix has no "
               "ViT vs AbSViT IN-A / IN-R / IN-Sketch numbers, and the official code's FGSM / PGD evaluation "
               "(epsilon 1/255 per channel; PGD: 5 steps of 0.5/255 from a random start) has no published numbers.")
    tests = []
    for title, reported, note in (("Table 1 (segmentation, mIoU)", t1, None), ("Table 2 (L_var ablation)", t2, None),
                                  ("Table 3 (ViT vs AbSViT robustness)", t3, t3_note),
                                  ("Table 4 (V&L fine-tuning: VQAv2, Flickr30k retrieval)", t4, None)):
        if reported is None:
            continue
        long = reported.comparison
        long = long.assign(difference=long.ours - long.paper)
        note = reported.note or note
        parts += [f"## {title}", "", markdown_table(long.round(2), index=False), ""] + ([note, ""] if note else [])
        if reported.significance is not None:
            tests.append(reported.significance)
    if tests:
        parts += ["## Differences against the seed spread", "",
                  f"Each pair's difference of means (second minus first, over its seeds) and {stats.TEST}.", "",
                  markdown_table(pd.concat(tests).round({"difference": 2, "t": 2, "p": 4}), index=False), ""]
    parts += [s for section in sections for s in (section.rstrip(), "")]
    write_text(Path(out_dir) / "report.md", "\n".join(parts))


def segmentation_frame(result_files) -> pd.DataFrame:
    """Table 1's long form (backbone kind, model, checkpoint, dataset, miou, seed) from `absvit segment` result files."""
    rows = []
    for path in result_files:
        r = json.loads(Path(path).read_text())
        rows.append({"backbone": r["backbone"], "model": r["model"], "checkpoint": str(r.get("checkpoint")),
                     "dataset": r["dataset"], "miou": float(r["miou"]), "seed": int(r.get("seed", 0))})
    return pd.DataFrame(rows, columns=["backbone", "model", "checkpoint", "dataset", "miou", "seed"])


def segmentation_from_mlflow(uri: str, preset: str) -> pd.DataFrame | None:
    """The newest finished segmentation run of each (backbone, dataset, seed) of ``preset``; None if there are none."""
    latest = {}
    for run in finished_runs(uri, preset, "tags.`absvit.stage` = 'segment'"):
        tags = run.data.tags
        latest.setdefault((tags["absvit.backbone"], tags["absvit.dataset"], int(tags.get("absvit.seed", 0))), run)
    if not latest:
        return None
    return pd.DataFrame([{"backbone": b, "model": run.data.params["model"], "checkpoint": run.data.params["checkpoint"],
                          "dataset": d, "miou": run.data.metrics["miou"], "seed": seed}
                         for (b, d, seed), run in sorted(latest.items(), key=lambda kv: kv[0][2])])


def ablation_from_mlflow(uri: str, preset: str, name: str = "lvar", *, required: bool = True) -> tuple[pd.DataFrame, str] | None:
    """The rows and caption label of the newest finished `absvit ablation --name NAME` run of ``preset``
    (None if there is none and not ``required``)."""
    runs = finished_runs(uri, preset, f"tags.`absvit.stage` = 'ablation' and tags.`absvit.run` = '{name}'", max_results=1)
    if not runs:
        if not required:
            return None
        raise TrackingError(f"no finished ablation run for preset {preset!r} in the MLflow store {uri} "
                            f"(tags absvit.stage=ablation, absvit.run={name})")
    p, m = runs[0].data.params, runs[0].data.metrics
    rows = [{"arm": arm, "run": p[f"run.{arm}"], "model": p[f"model.{arm}"], "seed": int(seed),
             **{c: m[f"{arm}.s{seed}.{c}"] for c in COLUMNS}, "label_space": int(p.get(f"label_space.{arm}", 0)),
             "skipped": p.get(f"skipped.{arm}") == "True"}
            for arm in COMPARISONS[name] for seed in p[f"seeds.{arm}"].split(",")]
    return pd.DataFrame(rows), p["label"]
