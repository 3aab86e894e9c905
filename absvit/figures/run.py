"""``absvit figures``: appendix Figs. 1, 3, 4 and their scores for one AbSViT checkpoint and its ViT baseline.

Outputs under ``--out-dir``: fig1_attention / fig3_alpha / fig4_decoder (.png, .pdf), the scores as
figures.{csv,md,tex} (a row per model, attention and alpha) and figures.json (everything, with the sources), all
mirrored into one MLflow run.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from absvit.data.scenes import read_scenes
from absvit.figures.draw import draw_figures
from absvit.figures.maps import analyse, load_models, short_class_names
from absvit.figures.scores import CAPTION, LOCALITY, pointing_chance, score_rows
from absvit.formats import display_name, markdown_table, tex_escape
from absvit.io import write_json, write_text
from absvit.tracking import Tracker, run_tags


def write_table(rows: list[dict], out_dir: Path, *, caption: str, note: str = "") -> None:
    """The scores of one seed as figures.csv, figures.md and a booktabs figures.tex."""
    frame = pd.DataFrame(rows)
    frame["alpha"] = frame["alpha"].map(lambda a: "--" if a is None or pd.isna(a) else f"{a:g}")
    frame["model"] = frame["model"].map(display_name)
    write_text(out_dir / "figures.csv", frame.round(4).to_csv(index=False))
    write_text(out_dir / "figures.md", f"## Top-down attention (appendix Figs. 1, 3, 4)\n\n{caption}\n\n"
               + markdown_table(frame.round(3), index=False) + "\n" + (f"\n{note}\n" if note else ""))

    def cells(column, fmt):
        return frame[column].map(lambda v: "--" if pd.isna(v) else fmt.format(v))

    blocks = [c for c in frame if c.startswith("locality_")]
    frame["locality"] = frame[blocks].mean(axis=1)
    tex = pd.DataFrame({"Model": frame["model"].map(tex_escape), "Attention": frame["attention"],
                        r"$\alpha$": frame["alpha"], "Selectivity": cells("selectivity", "{:.2f}"),
                        "Sel.\\ (raw)": cells("selectivity_raw", "{:.2f}"), "Specificity": cells("specificity", "{:.2f}"),
                        r"Pointing (\%)": cells("pointing", "{:.1f}"), "MSE in": cells("mse_inside", "{:.3f}"),
                        "MSE out": cells("mse_outside", "{:.3f}"), "Locality": cells("locality", "{:.2f}")})
    latex = tex.style.hide(axis="index").to_latex(hrules=True, position="t", position_float="centering",
                                                  column_format="llrrrrrrrr", caption=tex_escape(caption), label="tab:figures")
    write_text(out_dir / "figures.tex", latex)


def make_figures(absvit_checkpoint, vit_checkpoint, decoder_path, scenes_path, out_dir, *, absvit_model=None,
                 alphas, prior_scale: float, vit_model=None, show: int = 4, width: float = 7.0,
                 label: str = "", tracking_uri=None, track: bool = True, run_name=None, preset=None, run=None) -> dict:
    """Figures 1, 3, 4, the score table and JSON under ``out_dir``; logged to MLflow unless ``track=False``.
    ``alphas``: Fig. 3's sweep; ``prior_scale``: the alpha of Figs. 1 and 4 (the CLI's defaults: absvit.figures)."""
    start, out_dir, alphas = time.time(), Path(out_dir), [float(a) for a in alphas]
    absvit, vit, decoder, classes, a_size, v_size, source = load_models(
        absvit_checkpoint, vit_checkpoint, absvit_model, vit_model, decoder_path)
    scenes = read_scenes(scenes_path, num_classes=absvit.num_classes)
    names = short_class_names(classes)
    r = analyse(absvit, vit, decoder, scenes, a_size=a_size, v_size=v_size, alphas=alphas, prior_scale=prior_scale,
                show=show)
    a_name, v_name = absvit.pretrained_cfg["architecture"], vit.pretrained_cfg["architecture"]
    rows = [{**row, **{f"locality_{b + 1}": v for b, v in enumerate(r["locality"]["vit" if row["model"] == v_name
                                                                          else "absvit"])}}
            for row in score_rows(r, absvit_name=a_name, vit_name=v_name, alphas=[*alphas, -prior_scale])]
    figures = draw_figures(r, scenes, names, out_dir, alphas=alphas, prior_scale=prior_scale, show=show, width=width)
    caption = (CAPTION + f" Models: {display_name(a_name)} and its bottom-up baseline {display_name(v_name)}."
               + (f" {label}" + ("" if label.endswith(".") else ".") if label else ""))
    grid = absvit.patch_embed.grid_size
    chance = pointing_chance([m for ms in r["masks"] for m in ms], grid)
    note = "" if chance is None else (f"Pointing game by chance (a random patch lies mostly inside the prior's object): "
                                      f"{chance:.1f}%. ")
    note += (f"The alpha -{prior_scale:g} row is a control: the prior's sign flipped (its mask unchanged). "
             f"Locality (per block, bottom-up): {LOCALITY}. ")
    note += f"Figures: {', '.join(Path(f['pdf']).stem for f in figures.values())} (.png, .pdf) in {out_dir}."
    write_table(rows, out_dir, caption=caption, note=note)
    result = {"absvit": {"model": a_name, "checkpoint": str(absvit_checkpoint)},
              "vit": {"model": v_name, "checkpoint": str(vit_checkpoint)}, "decoder": str(decoder_path),
              "decoder_meta": decoder.meta, "scenes": str(scenes_path), "images": len(scenes), "pairs": len(r["pairs"]),
              "alphas": alphas, "prior_scale": prior_scale, "caption": caption, "rows": rows,
              "locality": {a_name: r["locality"]["absvit"], v_name: r["locality"]["vit"]}, "figures": figures,
              "pointing_chance": chance, **source, "seconds": round(time.time() - start, 2)}
    write_json(out_dir / "figures.json", result)
    tracker = Tracker(run_name or f"figures/{a_name}", uri=tracking_uri, enabled=track,
                      params={"absvit_model": a_name, "absvit_checkpoint": str(absvit_checkpoint), "vit_model": v_name,
                              "vit_checkpoint": str(vit_checkpoint), "decoder": str(decoder_path),
                              "scenes": str(scenes_path), "alphas": alphas, "prior_scale": prior_scale},
                      tags=run_tags("figures", preset, run or "figures", **source))
    metrics = {}
    for row in rows:
        key = f"{'vit' if row['model'] == v_name else 'absvit'}.{row['attention']}" + \
              (f".alpha_{row['alpha']:g}" if row["alpha"] is not None else "")
        metrics.update({f"{key}.{m}": row[m] for m in ("selectivity", "selectivity_raw", "specificity", "pointing",
                                                       "mse_inside", "mse_outside") if not np.isnan(row[m])})
    for kind in ("absvit", "vit"):
        metrics.update({f"{kind}.locality.block_{b + 1}": v for b, v in enumerate(r["locality"][kind])})
    tracker.log_metrics(metrics)
    for f in [*(v[ext] for v in figures.values() for ext in ("png", "pdf")),
              *(out_dir / f"figures.{ext}" for ext in ("csv", "md", "tex", "json"))]:
        tracker.log_artifact(f)
    tracker.finish()
    return result
