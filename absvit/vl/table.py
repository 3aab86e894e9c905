"""Table 4 (V&L fine-tuning: ViT vs AbSViT on VQAv2 and Flickr30k retrieval) and Figure 5's scores, over seeds, for
``absvit tables``: the same mean +- std cells, LaTeX / CSV / Markdown files and Welch's tests as Tables 1-3."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from absvit import stats
from absvit.figures.table import locality_words, specificity_words
from absvit.formats import display_name, markdown_table, tex_escape
from absvit.tables import Reported, Spread, paper_comparison, write_table
from absvit.tracking import finished_runs

HEAD = {"vqa_accuracy": "VQA", "i2t_r1": "TR@1", "i2t_r5": "TR@5", "i2t_r10": "TR@10", "t2i_r1": "IR@1",
        "t2i_r5": "IR@5", "t2i_r10": "IR@10"}
KINDS = ("vit", "absvit")
# text_pretrained: what the text encoder declares; vqa_train / retrieval_train: the splits each task trained on;
# majority_baseline / chance_r1: what a model reaches that learns nothing (VQA's most common answer, R@1 by chance);
# blind_accuracy: the same VQA model with every image blanked (what it answers from the question alone)
BASELINES = {"majority_baseline": "vqa_accuracy", "blind_accuracy": "vqa_accuracy", "chance_r1": ("i2t_r1", "t2i_r1")}
BASELINE_NAMES = {"majority_baseline": "majority answer", "blind_accuracy": "image-blind", "chance_r1": "chance"}
# retrieval's last-epoch training loss and the loss of scores that ignore the pair (result.json's final_train_loss,
# chance_loss): whether the fusion left its starting plateau at all
LOSSES = {"final_train_loss": "retrieval_train_loss", "chance_loss": "retrieval_chance_loss"}
PLATEAU = 0.01  # a training loss within this share of the chance loss is "at" it
COLUMNS = ["encoder", "seed", "model", *HEAD, "text_pretrained", "text_pretraining", "vqa_train", "retrieval_train",
           *BASELINES, *LOSSES.values()]


def caption(frame: pd.DataFrame) -> str:
    """Table 4's caption, with the protocol the runs followed (the splits each task trained on)."""
    def splits(task):
        seen = sorted({str(v) for v in frame[f"{task}_train"].dropna()})
        return " / ".join(seen) if seen else "unrecorded splits"

    vqa = splits("vqa")
    scored = ("not scored here: trained on train2014 + val2014, its test-dev predictions (submission.json) go to the "
              "evaluation server, the official protocol" if "val2014" in vqa else
              f"val2014, the official metric; trained on {vqa}")
    learned_nothing = []
    if frame["majority_baseline"].notna().any():
        learned_nothing.append(f"answering every question with the most common training answer scores "
                               f"{frame['majority_baseline'].mean():.1f}")
    if frame["chance_r1"].notna().any():
        learned_nothing.append(f"R@1 by chance is {frame['chance_r1'].mean():.1f}")
    blind = (f" The same VQA models with every image blanked (the question alone) score "
             f"{frame['blind_accuracy'].mean():.1f}: what the image adds is the difference."
             if frame["blind_accuracy"].notna().any() else "")
    return (f"V\\&L fine-tuning with ViT and AbSViT as the visual encoder of METER: VQAv2 accuracy ({scored}) and "
            f"Flickr30k retrieval recall@1/5/10 (Karpathy test split, trained on {splits('retrieval')}; TR: image to "
            "text, IR: text to image)."
            + (f" A model that learns nothing: {'; '.join(learned_nothing)}." if learned_nothing else "") + blind
            + " The appendix gives no V\\&L numbers.")
NOTE = "The appendix gives no V&L numbers: the paper column says --."
UNTRAINED_TEXT = (" The text encoder of these runs is NOT pretrained (a small RoBERTa from random init, made by `absvit "
                  "data embedded-vl`; the paper starts from roberta-base): these numbers say nothing about the paper's "
                  "setting, and two questions differ little as AbSViT's prior.")
BRIEF_TEXT = (" The text encoder of these runs is not roberta-base but a small RoBERTa pretrained briefly on the generated "
              "text by `absvit data embedded-vl` ({}): these numbers say nothing about the paper's setting.")


def _param(run, key: str):
    """An MLflow run's parameter, None where it is absent or logged as None."""
    value = run.data.params.get(key)
    return None if value in (None, "None") else value


def _kind(model: str) -> str:
    return "absvit" if model.startswith("absvit_") else "vit"


def vl_frame(result_files) -> pd.DataFrame:
    """One row per (encoder kind, seed): model and the numbers of both tasks, from `absvit vl-*` result.json files."""
    rows: dict = {}
    for path in result_files:
        r = json.loads(Path(path).read_text())
        row = rows.setdefault((_kind(r["encoder"]), int(r["seed"])), {"encoder": _kind(r["encoder"]), "seed": int(r["seed"]),
                                                                        "model": r["encoder"]})
        row.update({k: float(r[k]) for k in (*HEAD, *BASELINES) if k in r}, text_pretrained=r.get("text_encoder_pretrained"),
                   text_pretraining=r.get("text_encoder_pretraining"), **{f"{r['task']}_train": r.get("train_splits")})
        if r["task"] == "retrieval":
            row.update({column: float(r[k]) for k, column in LOSSES.items() if k in r})
    return pd.DataFrame(list(rows.values())).reindex(columns=COLUMNS)


def vl_from_mlflow(uri: str, preset: str) -> pd.DataFrame | None:
    """The newest finished V&L run of each (task, encoder run, seed) of ``preset``, as ``vl_frame``; None if none."""
    latest: dict = {}
    for stage in ("vl-vqa", "vl-retrieval"):
        for run in finished_runs(uri, preset, f"tags.`absvit.stage` = '{stage}'"):
            latest.setdefault((stage, run.data.params["encoder_model"], run.data.tags.get("absvit.seed", "0")), run)
    if not latest:
        return None
    rows: dict = {}
    for (_, model, seed), run in sorted(latest.items()):
        row = rows.setdefault((_kind(model), int(seed)), {"encoder": _kind(model), "seed": int(seed), "model": model})
        row.update({k: v for k, v in run.data.metrics.items() if k in HEAD or k in BASELINES},
                   text_pretrained={"True": True, "False": False}.get(run.data.params.get("text_encoder_pretrained")),
                   text_pretraining=_param(run, "text_encoder_pretraining"),
                   **{f"{run.data.params['task']}_train": run.data.params.get("train_splits")})
        if run.data.params["task"] == "retrieval":
            row.update({column: run.data.metrics[k] for k, column in LOSSES.items() if k in run.data.metrics})
    return pd.DataFrame(list(rows.values())).reindex(columns=COLUMNS)


def table4(frame: pd.DataFrame, out_dir, *, label: str | None = None) -> Reported:
    """``frame``: ``vl_frame`` rows; rows ViT then AbSViT, mean +- std over seeds, the pair's Welch test."""
    frame = frame.set_index("encoder").loc[[k for k in KINDS if k in set(frame.encoder)]].reset_index()
    spread = Spread.of(frame, "encoder", list(HEAD))
    models = frame.groupby("encoder", sort=False)["model"].agg(lambda m: " / ".join(sorted(set(m))))
    labels = {kind: display_name(models[kind]) for kind in spread.mean.index}
    write_table(Path(out_dir), "table4", spread, labels, HEAD, {"Model": [tex_escape(labels[k]) for k in spread.mean.index]},
                caption=caption(frame), ref="tab:vl", column_format="l" + "c" * len(HEAD), label=label)
    tests = [stats.compare(frame, "encoder", "vit", "absvit", HEAD, pair=f"{labels['absvit']} - {labels['vit']}")
             ] if set(KINDS) <= set(spread.mean.index) else []
    tests += [against_baselines(frame[frame.encoder == kind], labels[kind]) for kind in spread.mean.index]
    significance = pd.concat(tests) if tests else None
    untrained = frame.text_pretrained.map(lambda v: v is False).any()  # None: the folder does not say
    brief = sorted({p for p in frame.text_pretraining if isinstance(p, str)})
    said = UNTRAINED_TEXT if untrained else BRIEF_TEXT.format("; ".join(brief)) if brief else ""
    losses = {labels[kind]: (group[LOSSES["final_train_loss"]].mean(), group[LOSSES["chance_loss"]].mean())
              for kind, group in frame.groupby("encoder")}
    shows = learning_words(pd.concat(tests[-len(spread.mean.index):]), [labels[k] for k in spread.mean.index],
                           losses) if tests else ""
    return Reported(paper_comparison(spread, labels, {}, HEAD), significance, NOTE + said + shows)


def plateau_words(train: float, chance: float) -> str:
    """Where retrieval's training loss ended (mean over seeds) against the loss of scores that ignore the pair."""
    if train != train or chance != chance:  # NaN: runs from before the losses were recorded
        return ""
    if abs(train - chance) <= PLATEAU * chance:
        return (f"; its retrieval training loss ended at {train:.3f}, the loss of scores that ignore the pair "
                f"({chance:.3f}): the fusion never left its starting plateau")
    return (f"; its retrieval training loss ended at {train:.3f}, {'below' if train < chance else 'above'} the loss "
            f"of scores that ignore the pair ({chance:.3f})")


def learning_words(tests: pd.DataFrame, labels: list[str], losses: dict | None = None) -> str:
    """What ``against_baselines``' tests show, in words, per encoder: whether VQA beats the majority answer and the
    image-blind control, and whether retrieval beats chance, beyond the seed spread; ``losses``: label -> (retrieval's
    final training loss, its chance loss), means over seeds."""
    def beats(label, baseline, column):
        row = tests[(tests.pair == f"{label} - {BASELINE_NAMES[baseline]}") & (tests.column == HEAD[column])]
        if row.empty:
            return None
        r = row.iloc[0]
        return r.verdict == "exceeds the seed spread" and r.difference > 0, f"p = {r.p:.2g}" if r.p == r.p else r.verdict

    said = []
    for label in labels:
        parts = []
        if (majority := beats(label, "majority_baseline", "vqa_accuracy")) is not None:
            parts.append(f"its VQA accuracy {'exceeds' if majority[0] else 'does not exceed'} the majority answer "
                         f"beyond the seed spread ({majority[1]})")
        if (blind := beats(label, "blind_accuracy", "vqa_accuracy")) is not None:
            parts.append(f"its VQA accuracy {'exceeds' if blind[0] else 'does not exceed'} its image-blind control "
                         f"({blind[1]})" + ("" if blind[0] else ": it answers from the question, not the image"))
        recall = [beats(label, "chance_r1", c) for c in ("i2t_r1", "t2i_r1")]
        if all(r is not None for r in recall):
            parts.append("its retrieval R@1 " + ("exceeds chance both ways" if all(r[0] for r in recall) else
                         "exceeds chance in neither direction beyond the seed spread: retrieval learned nothing in this run"
                         if not any(r[0] for r in recall) else "exceeds chance one way only")
                         + f" (TR@1 {recall[0][1]}, IR@1 {recall[1][1]})"
                         + plateau_words(*(losses or {}).get(label, (float("nan"),) * 2)))
        if parts:
            said.append(f"{label}: " + "; ".join(parts) + ".")
    return (" What this run shows: " + " ".join(said)) if said else ""


def against_baselines(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    """One encoder's numbers against what learns nothing, over its seeds (Welch): VQA accuracy minus the
    majority-answer baseline and minus its image-blind control, TR@1 and IR@1 minus chance."""
    rows = []
    for baseline, columns in BASELINES.items():
        for column in (columns,) if isinstance(columns, str) else columns:
            if frame[baseline].notna().any() and frame[column].notna().any():
                rows.append({"pair": f"{label} - {BASELINE_NAMES[baseline]}",
                             "column": HEAD[column], **stats.welch(frame[baseline], frame[column])})
    return pd.DataFrame(rows, columns=["pair", "column", "n_a", "n_b", "difference", "t", "p", "verdict"])


OFFICIAL_MAP = "class attention"  # the official V&L demo's map; "token norm" rows are the classification figures'
FIGURE5_CAPTION = ("V&L Figure 5: the VQA-fine-tuned encoders' attention on the object each question names, on the "
                   "official V&L demo's map (the last block's class-token-to-patch attention summed over heads, shown as "
                   "clamp(map - (0.5 max + 0.5 min), 0), the question unpadded); rows marked (token norm) use the "
                   "classification figures' map instead. Selectivity (mass inside the object / its share of the image; "
                   "1 = none; displayed and raw map), specificity (selectivity on the named object minus the mean "
                   "selectivity on the image's other named objects; 0 for a map that ignores the question), pointing game "
                   "(% of questions whose map peaks inside the object), map shift (mean absolute change of the displayed "
                   "map between two questions about different objects of the same image; 0 = the question moves "
                   "nothing) and the encoders' attention locality (mean over blocks; per block in the CSV).")
FIG5_HEAD = {"selectivity": "Selectivity", "selectivity_raw": "Selectivity (raw map)", "specificity": "Specificity",
             "pointing": "Pointing game (%)", "map_shift": "Map shift", "locality": "Locality (mean)"}
SHIFT_VISIBLE = 0.01  # a map shift below this is reported as "no visible effect of the question"
FIG5_DIGITS = {"selectivity": 2, "selectivity_raw": 2, "specificity": 2, "pointing": 1, "map_shift": 4, "locality": 2}


def shown(spread: Spread, tests: list[pd.DataFrame]) -> str:
    """What Figure 5's numbers show, in words: how far the question moves AbSViT's top-down map, and whether its
    selectivity differs from its bottom-up map's beyond the seed spread (``tests[0]``: top-down vs bottom-up)."""
    shift = float(spread.mean["map_shift"].iloc[0])
    verdict = tests[0].set_index("column").loc[FIG5_HEAD["selectivity"], "verdict"] if tests else "not tested"
    seen = ("no effect of the question is visible in this run" if shift < SHIFT_VISIBLE
            else "the question visibly moves the map")
    return (f"What this run shows: a question moves AbSViT's top-down map by {shift:.4f} on average (the mean absolute "
            f"change of a map scaled to [0, 1]; 0 = not at all): {seen} (threshold {SHIFT_VISIBLE}); its selectivity "
            f"against AbSViT's bottom-up map: {verdict}.")


def figure5_scores(score_files, out_dir, *, label: str | None = None) -> str:
    """Figure 5's scores (`absvit vl-figure`'s fig5.csv, one per seed) as mean +- std per (model, attention):
    ``figure5.{tex,csv,md}``; returns the report's section, with AbSViT's top-down rows tested against its bottom-up
    ones and against the ViT's (Welch)."""
    long = pd.concat([pd.read_csv(f).assign(seed=i) for i, f in enumerate(score_files)])
    blocks = [c for c in long if c.startswith("locality_")]
    long["locality"] = long[blocks].mean(axis=1)
    long["row"] = [f"{m} {a}" + ("" if k == OFFICIAL_MAP else f" ({k})") for m, a, k in zip(long.model, long.attention,
                                                                                          long["map"])]
    heads = {**FIG5_HEAD, **{b: f"Locality block {b.split('_')[1]}" for b in blocks}}
    spread = Spread.of(long, "row", list(heads), {**FIG5_DIGITS, **dict.fromkeys(blocks, 2)})
    first = long.drop_duplicates("row").set_index("row").loc[spread.mean.index]
    write_table(Path(out_dir), "figure5", spread, {r: r for r in spread.mean.index}, heads,
                {"Model": [tex_escape(m) for m in first.model], "Attention": list(first.attention),
                 "Map": list(first["map"])},
                caption=tex_escape("V&L Figure 5: attention on the object the question names (the VQA models)."),
                ref="tab:figure5", column_format="lll" + "c" * len(FIG5_HEAD), label=label,
                tex_heads={"pointing": "Pointing game (\\%)"}, tex_columns=list(FIG5_HEAD))
    rows = list(first.index[first["map"] == OFFICIAL_MAP])  # tested: the official map's rows
    tests = [stats.compare(long, "row", other, rows[0], FIG5_HEAD, pair=f"{rows[0]} - {other}") for other in rows[1:]]
    md = markdown_table(spread.cells(tex=False).assign(n=spread.seeds().astype(int)).rename(columns=heads)
                        .rename_axis(index="Model", columns=None))
    official = first[first["map"] == OFFICIAL_MAP]
    absvit = official.index[official.attention == "top-down"][0]
    words = specificity_words(long, top_down=absvit, bottom_up=official.index[official.attention == "bottom-up"][0],
                              control=None, what=f"On the official map, {official.loc[absvit, 'model']}")
    means = {m: [float(long.loc[long.model == m, b].mean()) for b in blocks] for m in dict.fromkeys(long.model)}
    return "\n".join(["## V&L Figure 5 (attention moved by the question)", "", shown(spread, tests), words, "",
                      locality_words(means) if blocks else "", "",
                      f"Over {len(score_files)} seed(s) of the VQA fine-tuning (mean ± sample std where n > 1). "
                      f"{FIGURE5_CAPTION} The figures of each seed are in `figures/s<seed>/fig5_vqa.png`.", "", md, "",
                      f"AbSViT's top-down rows against the others: difference of means and {stats.TEST}.", "",
                      markdown_table(pd.concat(tests).round({"difference": 4, "t": 2, "p": 4}), index=False), ""])
