"""The official release's checkpoints and their published numbers, and ``absvit released``: every file re-measured.

``RELEASED`` is the one place for the files' download addresses and the numbers the paper / the official README
publish (ImageNet top-1 %, ImageNet-C mCE): the models' pretrained cfgs, the pipeline's path checks and the tables all
read it. It imports nothing heavy: Snakemake reads it while it plans.

``absvit released`` (the ``released`` preset's table): for each released file evaluated by the pipeline, the published
top-1 and mCE beside the measured ones and their difference, and the suites the model zoo does not list (IN-A, IN-R,
IN-Sketch, FGSM, PGD), as ``released.{tex,csv,md}``, mirrored into one MLflow run; ``--from-mlflow`` rebuilds the
same files from the evaluation runs in the store.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SOURCE = "https://berkeley.box.com/shared/static/"  # the official release's files (its README, demo notebook)


@dataclass(frozen=True)
class Release:
    file_id: str
    top1: float | None = None  # ImageNet top-1 (%), as published
    mce: float | None = None  # ImageNet-C mCE, as published (lower is better)

    @property
    def url(self) -> str:
        return f"{SOURCE}{self.file_id}.pth"


RELEASED = {
    "vit_tiny_patch16_224": Release("mw99ywof7ri7kczq79iwjia2att2dpmh", 72.5, 71.1),
    "absvit_tiny_patch16_224": Release("0n2tvn9hmx7bwv097nwb60vw1jf4841n", 74.1, 66.7),
    "vit_small_patch16_224": Release("tftkkov22978lmvgv1g1cxuuk62iacn7", 80.1, 54.6),
    "absvit_small_patch16_224": Release("3wpkf5qo31ghb4dzehczup4pfh24xmve", 80.7, 51.6),
    "vit_base_patch16_224": Release("6fszey9291pvnkwdpt5ngrhh0rcu1iqu", 80.8, 49.3),
    "absvit_base_patch16_224": Release("aain2svhs9lfvz8o21xao91dsnylgsot", 81.0, 48.3),
    "vit_tiny_patch8_224_gap": Release("zzy0bl6b59q05a3hobbehqeuhg5u1mhk"),  # the attention pictures' pair: no numbers
    "absvit_tiny_patch8_224_gap": Release("7415yz4d1l5z0ur6x32k35f8y99zgynq"),
}
# The measured columns: (suite file, number), heading; then the published ones they are compared with.
MEASURED = {"clean": (("clean", "top1"), "Top-1"), "in_c": (("imagenet-c", "mce"), "mCE"),
            "in_a": (("imagenet-a", "top1"), "IN-A"), "in_r": (("imagenet-r", "top1"), "IN-R"),
            "in_sk": (("imagenet-sketch", "top1"), "IN-SK"), "fgsm": (("fgsm", "top1"), "FGSM"),
            "pgd": (("pgd", "top1"), "PGD")}
CAPTION = ("The official release's checkpoints re-measured: ImageNet top-1 (%) and ImageNet-C mCE (lower is better) "
           "beside the published numbers (the official README), their difference (measured - published), and the "
           "suites the model zoo does not list: ImageNet-A, -R, -Sketch and FGSM / 5-step PGD top-1 (epsilon 1/255).")


def download_hint(model: str) -> str:
    """`` (download: URL)`` for a released model, else nothing."""
    release = RELEASED.get(model)
    return f" (download: {release.url})" if release else ""


def measured_row(run: str, model: str, checkpoint: str, eval_dir) -> dict:
    """One released file's row: its numbers in ``eval_dir/<suite>.json`` (`absvit evaluate`) and the published ones."""
    import json

    from absvit.errors import DatasetError

    row = {"run": run, "model": model, "checkpoint": checkpoint}
    for column, ((suite, key), _) in MEASURED.items():
        path = Path(eval_dir) / f"{suite}.json"
        try:
            row[column] = float(json.loads(path.read_text())[key])
        except (OSError, ValueError, KeyError) as e:
            raise DatasetError(f"{path}: expected `absvit evaluate` output with {key!r} ({type(e).__name__}: {e})") from None
    return row


def frame(rows: list[dict]):
    """The table's numbers: measured, published and difference for top-1 and mCE, then the other suites."""
    import pandas as pd

    out = pd.DataFrame(rows)
    published = [RELEASED.get(m, Release("")) for m in out.model]
    out["top1_published"] = [r.top1 for r in published]
    out["mce_published"] = [r.mce for r in published]
    out["top1_difference"] = out.clean - out.top1_published.astype(float)
    out["mce_difference"] = out.in_c - out.mce_published.astype(float)
    order = ["run", "model", "checkpoint", "top1_published", "clean", "top1_difference", "mce_published", "in_c",
             "mce_difference", "in_a", "in_r", "in_sk", "fgsm", "pgd"]
    return out[order].astype({c: float for c in order[3:]})


HEADS = {"top1_published": "Top-1 (published)", "clean": "Top-1", "top1_difference": "Top-1 diff.",
         "mce_published": "mCE (published)", "in_c": "mCE", "mce_difference": "mCE diff.", "in_a": "IN-A",
         "in_r": "IN-R", "in_sk": "IN-SK", "fgsm": "FGSM", "pgd": "PGD"}
TEX_HEADS = {"top1_published": "pub.", "clean": "ours", "top1_difference": r"$\Delta$", "mce_published": "pub.",
             "in_c": "ours", "mce_difference": r"$\Delta$", "in_a": "IN-A", "in_r": "IN-R", "in_sk": "IN-SK",
             "fgsm": "FGSM", "pgd": "PGD"}


def _cell(value, signed: bool = False) -> str:
    import math

    if value is None or math.isnan(value):
        return "--"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def write_tables(table, out_dir, *, label: str = "") -> list[Path]:
    """``released.csv`` (the numbers), ``released.md`` and a booktabs ``released.tex`` (top-1 and mCE grouped:
    published, ours, difference)."""
    import pandas as pd

    from absvit.formats import markdown_table, tex_escape
    from absvit.io import write_text
    from absvit.formats import display_name

    out_dir = Path(out_dir)
    names = [display_name(m) for m in table.model]
    shown = pd.DataFrame({"Model": names, **{HEADS[c]: [_cell(v, signed=c.endswith("difference")) for v in table[c]]
                                             for c in HEADS}})
    sentence = (f" {label}" + ("" if label.endswith(".") else ".")) if label else ""
    write_text(out_dir / "released.csv", table.assign(Model=names).round(4).to_csv(index=False))
    write_text(out_dir / "released.md", f"## The released checkpoints, re-measured\n\n{CAPTION}{sentence}\n\n"
               + markdown_table(shown, index=False) + "\n")
    tex = pd.DataFrame({"Model": [tex_escape(n) for n in names],
                        **{TEX_HEADS[c] + " " * i: [_cell(v, signed=c.endswith("difference")) for v in table[c]]
                           for i, c in enumerate(HEADS)}})
    latex = tex.style.hide(axis="index").to_latex(hrules=True, position="t", position_float="centering",
                                                  column_format="l" + "rrr" + "rrr" + "r" * 5,
                                                  caption=tex_escape(CAPTION + sentence), label="tab:released")
    header = r"& \multicolumn{3}{c}{ImageNet top-1} & \multicolumn{3}{c}{ImageNet-C mCE} & \multicolumn{5}{c}{top-1} \\"
    latex = latex.replace("\\toprule\n", "\\toprule\n" + header + "\n", 1)
    write_text(out_dir / "released.tex", "% released: \\input this into a document whose preamble has "
               "\\usepackage{booktabs} (no other package needed).\n" + latex)
    return [out_dir / f"released.{ext}" for ext in ("csv", "md", "tex")]


def read_rows(evals: dict[str, Path]) -> list[dict]:
    """``evals``: run -> its eval folder; the model and checkpoint come from the folder's clean result."""
    import json

    from absvit.errors import DatasetError

    rows = []
    for run, folder in evals.items():
        clean = Path(folder) / "clean.json"
        try:
            result = json.loads(clean.read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{clean}: expected `absvit evaluate` output ({type(e).__name__}: {e})") from None
        rows.append(measured_row(run, result["model"], result["checkpoint"], folder))
    return rows


def log_table(table, *, preset: str, label: str, artifacts, tracking_uri=None, track: bool = True) -> None:
    """One MLflow run ``released/<preset>`` (tag absvit.stage=released): each run's model and file as parameters, its
    measured numbers as metrics ``<run>.<column>``; ``rows_from_mlflow`` reads them back."""
    from absvit.tracking import Tracker, run_tags

    params = {"label": label, "runs": ",".join(table.run), **{f"model.{r.run}": r.model for r in table.itertuples()},
              **{f"checkpoint.{r.run}": r.checkpoint for r in table.itertuples()}}
    with Tracker(f"released/{preset}", uri=tracking_uri, enabled=track, params=params,
                 tags=run_tags("released", preset, "released")) as tracker:
        tracker.log_metrics({f"{r.run}.{c}": getattr(r, c) for r in table.itertuples() for c in MEASURED})
        for path in artifacts:
            tracker.log_artifact(path)


def rows_from_mlflow(uri: str, preset: str) -> tuple[list[dict], str]:
    """The rows and label of the newest finished ``released`` run of ``preset`` in the store."""
    from absvit.errors import TrackingError
    from absvit.tracking import finished_runs

    runs = finished_runs(uri, preset, "tags.`absvit.stage` = 'released'", max_results=1)
    if not runs:
        raise TrackingError(f"no finished `absvit released` run for preset {preset!r} in the MLflow store {uri} "
                            "(tag absvit.stage=released)")
    p, m = runs[0].data.params, runs[0].data.metrics
    return ([{"run": run, "model": p[f"model.{run}"], "checkpoint": p[f"checkpoint.{run}"],
              **{c: m[f"{run}.{c}"] for c in MEASURED}} for run in p["runs"].split(",")], p["label"])


def released(evals: dict[str, Path] | None, out_dir, *, preset: str, label: str = "", tracking_uri=None,
             track: bool = True, from_mlflow: bool = False):
    """``absvit released``: the table of the released files' numbers (from their eval folders, or ``from_mlflow``)."""
    from absvit.errors import UsageError
    from absvit.tracking import tracking_uri as store

    if not evals and not from_mlflow:
        raise UsageError("give --eval RUN=EVAL_DIR ... (the `absvit evaluate` results of each released file) or "
                         "--from-mlflow (read them from the tracking store)")
    if from_mlflow:
        rows, label = rows_from_mlflow(store(tracking_uri), preset)
    else:
        rows = read_rows(evals or {})
    table = frame(rows)
    paths = write_tables(table, out_dir, label=label)
    if not from_mlflow:
        log_table(table, preset=preset, label=label, artifacts=paths, tracking_uri=tracking_uri, track=track)
    return table
