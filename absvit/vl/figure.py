"""``absvit vl-figure``: Figure 5, the official VQA demo made measurable.

For each scene of the Figure 5 manifest (val questions that name one object, with that object's mask), the
VQA-fine-tuned AbSViT's attention maps: bottom-up (no feedback), and top-down with each question as the prior;
beside them the VQA-fine-tuned ViT's map (bottom-up: it has no other). Scored against the mask of the object each
question names (``absvit.figures.scores``: selectivity, pointing game), and how far the top-down map moves between two
questions on the same image (``map shift``: mean absolute difference of the two display-normalised maps; 0 = the
question changes nothing). Outputs: fig5_vqa.{png,pdf}, fig5.{csv,json} and one MLflow run.
"""
from __future__ import annotations

import csv
import itertools
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from absvit.data.scenes import load_mask
from absvit.errors import DatasetError
from absvit.figures.draw import save_grid, unit
from absvit.figures.scores import map_scores, pointing_chance
from absvit.formats import display_name
from absvit.io import write_json, write_text
from absvit.tracking import Tracker, run_tags
from absvit.vl.datasets import load_image, tokenize, vl_transform
from absvit.vl.finetune import load_finetuned, tokenizer_of
from absvit.vl.table import FIGURE5_CAPTION as CAPTION

COLUMNS = ("question_id", "question", "image", "mask", "class_index")



def read_manifest(path) -> list[dict]:
    """The Figure 5 manifest rows (paths resolved beside it); a bad row is named."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(path.open()))
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the Figure 5 manifest ({e})") from None
    if not rows or set(COLUMNS) - set(rows[0]):
        raise DatasetError(f"{path}: expected a CSV with columns {', '.join(COLUMNS)}")
    for n, row in enumerate(rows, 2):
        for key in ("image", "mask"):
            row[key] = path.parent / row[key]
            if not row[key].is_file():
                raise DatasetError(f"{path}: line {n}: {key} {row[key]} does not exist")
    return rows


def maps_of(objective, rows: list[dict], vl: dict, *, top_down: bool, device) -> list[np.ndarray]:
    """One attention map per manifest row: the question as the prior (``top_down``), or none. ``vl``: what the
    model's file records (its recipe, its text encoder)."""
    tf, tokenizer = vl_transform(vl["recipe"]["img_size"], False), tokenizer_of(vl["text_encoder"])
    out = []
    with torch.no_grad():
        for row in rows:
            image = tf(load_image(row["image"]))[None].to(device)
            text = tokenize(tokenizer, row["question"], vl["recipe"]["max_text_len"])
            amap = objective.meter.attention_map(image, text["input_ids"][None].to(device),
                                                 text["attention_mask"][None].to(device), "mean", top_down=top_down)
            out.append(amap[0].float().cpu().numpy())
    return out


def map_shift(rows: list[dict], maps: list[np.ndarray]) -> float:
    """Mean absolute difference of the displayed (unit-scaled) maps of two questions about different objects of the
    same image, over every such pair."""
    shifts = []
    for _, group in itertools.groupby(range(len(rows)), key=lambda i: str(rows[i]["image"])):
        for i, j in itertools.combinations(list(group), 2):
            if rows[i]["mask"] != rows[j]["mask"]:
                shifts.append(float(np.abs(unit(maps[i]) - unit(maps[j])).mean()))
    return float(np.mean(shifts)) if shifts else float("nan")


def title(question: str, width: int = 20) -> str:
    """A question as a panel title: at most two lines of ``width`` characters."""
    return "\n".join(textwrap.wrap(question, width, max_lines=2, placeholder="..."))


def draw(rows, maps: dict, img_size: int, out_dir: Path, *, show: int, width: float) -> dict:
    """Per scene: image | AbSViT bottom-up | ViT | AbSViT top-down for each of its questions."""
    scenes = list(dict.fromkeys(str(r["image"]) for r in rows))[:show]
    grid = []
    for scene in scenes:
        picks = [i for i, r in enumerate(rows) if str(r["image"]) == scene][:3]
        rgb = np.asarray(load_image(rows[picks[0]]["image"]).resize((img_size, img_size)), dtype=np.float32) / 255
        grid.append([{"image": rgb, "title": "image"},
                     {"image": rgb, "map": unit(maps["bottom-up"][picks[0]]), "title": "AbSViT bottom-up"},
                     {"image": rgb, "map": unit(maps["vit"][picks[0]]), "title": "ViT"}]
                    + [{"image": rgb, "map": unit(maps["top-down"][i]), "title": title(rows[i]["question"])}
                       for i in picks])
    return save_grid(out_dir / "fig5_vqa", grid, width=width, colorbar_label="attention (display-normalised)")


def make_figure5(absvit_model, vit_model, manifest, out_dir, *, show: int = 4, width: float = 7.0, label: str = "",
                 tracking_uri=None, track: bool = True, run_name=None, preset=None, run=None) -> dict:
    """Figure 5 and its scores under ``out_dir`` from the two VQA runs' ``model.pth``; MLflow unless ``track=False``."""
    start, out_dir = time.time(), Path(out_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    absvit, a_vl = load_finetuned(absvit_model, device=device)
    vit, v_vl = load_finetuned(vit_model, device=device)
    rows = read_manifest(manifest)
    size = a_vl["recipe"]["img_size"]
    kinds = {"top-down": (absvit, a_vl, True), "bottom-up": (absvit, a_vl, False), "vit": (vit, v_vl, False)}
    maps = {kind: maps_of(model, rows, vl, top_down=top_down, device=device) for kind, (model, vl, top_down) in kinds.items()}
    masks = [load_mask(r["mask"], size) for r in rows]
    scores = [{"model": display_name(vl["encoder_model"]), "attention": "bottom-up" if kind == "vit" else kind,
               "questions": len(rows), **map_scores(maps[kind], masks), "map_shift": map_shift(rows, maps[kind])}
              for kind, (_, vl, _) in kinds.items()]
    figure = draw(rows, maps, size, out_dir, show=show, width=width)
    chance = pointing_chance(masks, maps["vit"][0].shape)
    caption = CAPTION + (f" {label}" if label else "")
    frame = pd.DataFrame(scores)
    write_text(out_dir / "fig5.csv", frame.round(4).to_csv(index=False))
    result = {"absvit": str(absvit_model), "vit": str(vit_model), "manifest": str(manifest), "rows": scores,
              "pointing_chance": chance, "caption": caption, "figure": figure, "seed": a_vl["recipe"]["seed"],
              "seconds": round(time.time() - start, 2)}
    write_json(out_dir / "fig5.json", result)
    metrics = {f"{kind}.{m}": row[m] for kind, row in zip(kinds, scores)
               for m in ("selectivity", "selectivity_raw", "pointing", "map_shift") if not np.isnan(row[m])}
    tags = run_tags("vl-figure", preset, run or "vl", seed=result["seed"])
    with Tracker(run_name or "vl-figure", uri=tracking_uri, enabled=track, tags=tags,
                 params={"absvit_model": str(absvit_model), "vit_model": str(vit_model), "manifest": str(manifest)}) as tracker:
        tracker.log_metrics(metrics)
        for path in (figure["png"], figure["pdf"], out_dir / "fig5.csv", out_dir / "fig5.json"):
            tracker.log_artifact(path)
    return result
