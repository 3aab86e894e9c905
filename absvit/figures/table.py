"""The appendix figures' scores over seeds, for ``absvit tables``: ``figures.{tex,csv,md}`` and the report's section,
with what the run shows in words, for Figs. 1/3/4 and (``specificity_words``, ``locality_words``) Figure 5:

- the top-down map's specificity against 0 and against the bottom-up map's (Welch's test over seeds);
- the control with the prior's sign flipped: a map that follows the prior's *sign* loses its specificity there, a
  map that follows the *size* of the feedback (the prior's mask spread by local attention) keeps it;
- selectivity of the top-down and the bottom-up map, both (a map can pick the named object out without being more
  selective on it);
- attention locality per block, and in plain words when it is too uniform for any prior to steer it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from absvit import stats
from absvit.figures.scores import DEFINITIONS, LOCALITY, UNIFORM, CAPTION as FIGURES_CAPTION
from absvit.formats import display_name, markdown_table, tex_escape
from absvit.tables import Spread, write_table

FIG_HEAD = {"selectivity": "Selectivity", "selectivity_raw": "Selectivity (raw map)", "specificity": "Specificity",
            "pointing": "Pointing game (%)", "mse_inside": "MSE inside", "mse_outside": "MSE outside",
            "locality": "Locality (mean)"}
FIG_DIGITS = {"selectivity": 2, "selectivity_raw": 2, "specificity": 2, "pointing": 1, "mse_inside": 3,
              "mse_outside": 3, "locality": 2}


def versus_zero(values) -> dict:
    """``stats.welch`` of ``values`` against 0 (a map that ignores the prior)."""
    values = [float(v) for v in values]
    return stats.welch([0.0] * len(values), values)


def p_text(test: dict) -> str:
    return f"p = {test['p']:.2g}" if test["p"] == test["p"] else test["verdict"]


def specificity_words(long: pd.DataFrame, *, top_down: str, bottom_up: str, control: str | None, what: str) -> str:
    """What the specificity shows, in words: ``long`` has rows per (``row``, seed) with ``specificity`` and
    ``selectivity``; ``top_down`` / ``bottom_up`` / ``control`` (the prior's sign flipped) name its rows."""
    def of(row, column="specificity"):
        return long.loc[long.row == row, column].astype(float)

    td, bu = of(top_down), of(bottom_up)
    zero, vs_bu = versus_zero(td), stats.welch(bu, td)
    follows = zero["verdict"] == "exceeds the seed spread" and td.mean() > 0
    seen = (f"follows the prior: specificity {td.mean():.2f} ± {td.std(ddof=1):.2f} over {len(td)} seeds, above 0 "
            f"beyond the seed spread ({p_text(zero)}; against the bottom-up map's {bu.mean():.2f}: {p_text(vs_bu)})"
            if follows else
            f"does not follow the prior beyond the seed spread: specificity "
            f"{stats.cell(td.mean(), td.std(ddof=1), len(td), digits=2)} (against 0: {zero['verdict']}, {p_text(zero)})")
    words = [f"{what}'s top-down map {seen}."]
    if control is not None and len(of(control)):
        neg = of(control)
        ctl = versus_zero(neg)
        if not follows:
            words.append(f"With the prior's sign flipped (the control): specificity {neg.mean():.2f} ({ctl['verdict']}).")
        elif ctl["verdict"] == "exceeds the seed spread" and neg.mean() > 0:
            words.append(f"With the prior's sign flipped (the control) the specificity stays {neg.mean():.2f} "
                         f"({p_text(ctl)} against 0): the map follows the size of the feedback, i.e. the prior's mask "
                         "spread by local attention, not attention re-weighted by the prior.")
        else:
            words.append(f"With the prior's sign flipped (the control) the specificity is {neg.mean():.2f} "
                         f"({ctl['verdict']}): the map follows the prior's sign, i.e. attention re-weighted by the "
                         "prior, not merely the size of the feedback.")
    sel_td, sel_bu = of(top_down, "selectivity"), of(bottom_up, "selectivity")
    words.append(f"Selectivity on the prior's object: top-down {sel_td.mean():.2f}, bottom-up {sel_bu.mean():.2f} "
                 f"({stats.welch(sel_bu, sel_td)['verdict']}).")
    return " ".join(words)


def locality_words(means: dict[str, list[float]]) -> str:
    """Each model's attention locality per block in words, and a plain warning where it is too uniform."""
    parts = [f"{display_name(m)}: {' '.join(f'{v:.2f}' for v in blocks)}" for m, blocks in means.items()]
    uniform = [display_name(m) for m, blocks in means.items() if sum(blocks) / len(blocks) < UNIFORM]
    text = f"Attention locality per block (bottom-up; 1 = uniform): {'; '.join(parts)}."
    if uniform:
        text += (f" The attention of {', '.join(uniform)} is too uniform (mean locality under {UNIFORM}) for any prior "
                 "to steer it: its top-down map can only brighten what the feedback's size reaches.")
    return text


def figure_scores(score_files, out_dir, *, label: str | None = None) -> str:
    """The appendix figures' scores (`absvit figures`' figures.csv, one per seed) as mean +- std per (model,
    attention, alpha): ``figures.{tex,csv,md}`` (the LaTeX without the per-block locality). Returns the report's
    section (Markdown) with what the run shows in words."""
    long = pd.concat([pd.read_csv(f, dtype={"alpha": str}, keep_default_na=False, na_values=[""]).assign(seed=i)
                      for i, f in enumerate(score_files)])
    blocks = [c for c in long if c.startswith("locality_")]
    long["locality"] = long[blocks].mean(axis=1)
    long["row"] = [f"{display_name(m)} {a}" + ("" if al in ("--", "") else f", alpha {al}")
                   for m, a, al in zip(long.model, long.attention, long.alpha)]
    heads = {**FIG_HEAD, **{b: f"Locality block {b.split('_')[1]}" for b in blocks}}
    spread = Spread.of(long, "row", list(heads), {**FIG_DIGITS, **dict.fromkeys(blocks, 2)})
    first = long.drop_duplicates("row").set_index("row").loc[spread.mean.index]
    tex_first = {"Model": [tex_escape(display_name(m)) for m in first.model], "Attention": list(first.attention),
                 r"$\alpha$": list(first.alpha)}
    write_table(Path(out_dir), "figures", spread, {r: r for r in spread.mean.index}, heads, tex_first,
                caption=tex_escape(FIGURES_CAPTION), ref="tab:figures", column_format="lll" + "c" * len(FIG_HEAD),
                label=label, tex_heads={"pointing": "Pointing game (\\%)"}, tex_columns=list(FIG_HEAD))
    md = markdown_table(spread.cells(tex=False).assign(n=spread.seeds().astype(int)).rename(columns=heads)
                        .rename_axis(index="Model", columns=None))
    absvit = first.index[first.model.str.startswith("absvit")]
    alphas = [a for a in first.loc[absvit, "alpha"] if a not in ("--", "")]
    scale = max(alphas, key=float) if alphas else None
    words = ""
    if scale is not None:
        row = f"{display_name(first.loc[absvit[0], 'model'])}"
        control = f"{row} top-down, alpha -{scale}"
        words = specificity_words(long, top_down=f"{row} top-down, alpha {scale}", bottom_up=f"{row} bottom-up",
                                  control=control if control in set(long.row) else None,
                                  what=f"{row} (alpha {scale})")
    means = {m: [float(long.loc[long.model == m, b].mean()) for b in blocks] for m in dict.fromkeys(long.model)}
    return "\n".join(["## Top-down attention (appendix Figs. 1, 3, 4)", "",
                      f"What this run shows: {words}", "", locality_words(means) if blocks else "", "",
                      f"Over {len(score_files)} seed(s) of the AbSViT and ViT runs (mean ± sample std where n > 1): "
                      f"{DEFINITIONS}; {LOCALITY}. The alpha -α rows are the control: the prior's sign flipped. The "
                      "figures of each seed are in `figures/s<seed>/`.", "", md, ""])
