"""``absvit vl-figure``: Figure 5, the official VQA demo made measurable.

For each scene of the Figure 5 manifest (val questions that name one object, with that object's mask), the
VQA-fine-tuned AbSViT's attention maps: bottom-up (no feedback), and top-down with each question as the prior;
beside them the VQA-fine-tuned ViT's map (bottom-up: it has no other). The map is the official demo's
(``demo/visualize_attention.ipynb``): the last block's class-token-to-patch attention summed over heads, shown as
``clamp(map - (0.5 max + 0.5 min), 0)``, the question tokenised without padding (its prior the mean of its own
tokens). A second row per scene shows the classification figures' token-norm map (Figs. 1-3), labelled as such.
Scored against the mask of the object each question names (``absvit.figures.scores``: selectivity, pointing game),
and how far the top-down map moves between two questions on the same image (``map shift``: mean absolute difference
of the two display-normalised maps; 0 = the question changes nothing). Outputs: fig5_vqa.{png,pdf},
fig5.{csv,json} and one MLflow run.
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
from PIL import Image
from torchvision.transforms import InterpolationMode

from absvit.data.scenes import checked_mask
from absvit.errors import DatasetError, UsageError
from absvit.figures.draw import save_grid, unit
from absvit.figures.scores import DISPLAY_HIGH, VL_DISPLAY_HIGH, locality, map_scores, pointing_chance, specificity
from absvit.formats import display_name
from absvit.io import write_json, write_text
from absvit.models import AbSViT, block_attention
from absvit.tracking import Tracker, run_tags
from absvit.data.readers import read_rgb
from absvit.vl.encoders import tokenizer_of
from absvit.vl.finetune import load_finetuned
from absvit.vl.table import FIGURE5_CAPTION as CAPTION
from absvit.vl.transforms import vl_transform, vl_view

COLUMNS = ("question_id", "question", "image", "mask", "class_index")

# the maps drawn and scored: the official V&L demo's (in the text) and the classification figures' (a row below)
MAPS = {"class attention": VL_DISPLAY_HIGH, "token norm": DISPLAY_HIGH}


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
        try:
            with Image.open(row["mask"]) as im:
                checked_mask(im, row["mask"])
        except OSError as e:
            raise DatasetError(f"{path}: line {n}: mask {row['mask']} is not an image ({e})") from None
        except DatasetError as e:
            raise DatasetError(f"{path}: line {n}: {e}") from None
    return rows


def view_mask(path, img_size: int) -> np.ndarray:
    """An object's mask (a single-channel image: > 127 is inside) as the model sees its image (``vl_view``,
    nearest)."""
    with Image.open(path) as im:
        return np.asarray(vl_view(img_size, InterpolationMode.NEAREST)(checked_mask(im, path))) > 127


def maps_of(objective, rows: list[dict], vl: dict, *, top_down: bool, kind: str, device) -> list[np.ndarray]:
    """One attention map (``METER.attention_map``'s ``kind``) per manifest row: the question as the prior
    (``top_down``), or none. The question is tokenised without padding, as the official demo's ``get_prompt``, so the
    VQA prior (the mean of the text tokens) runs over its own tokens. ``vl``: what the model's file records."""
    tf, tokenizer = vl_transform(vl["recipe"]["img_size"], False), tokenizer_of(vl["text_encoder"])
    out = []
    with torch.no_grad():
        for row in rows:
            image = tf(read_rgb(row["image"]))[None].to(device)
            text = tokenizer(row["question"], truncation=True, max_length=vl["recipe"]["max_text_len"],
                             return_tensors="pt")
            amap = objective.meter.attention_map(image, text["input_ids"].to(device),
                                                 text["attention_mask"].to(device), "mean", top_down=top_down,
                                                 kind=kind)
            out.append(amap[0].float().cpu().numpy())
    return out


def map_shift(rows: list[dict], maps: list[np.ndarray], high: float = VL_DISPLAY_HIGH) -> float:
    """Mean absolute difference of the displayed (unit-scaled, ``unit(map, high)``) maps of two questions about
    different objects of the same image, over every such pair."""
    shifts = []
    for _, group in itertools.groupby(range(len(rows)), key=lambda i: str(rows[i]["image"])):
        for i, j in itertools.combinations(list(group), 2):
            if rows[i]["mask"] != rows[j]["mask"]:
                shifts.append(float(np.abs(unit(maps[i], high) - unit(maps[j], high)).mean()))
    return float(np.mean(shifts)) if shifts else float("nan")


def scene_masks(rows: list[dict], masks: list[np.ndarray]) -> list[tuple[list[np.ndarray], int]]:
    """Per row: the masks of the objects its image's questions name (each once), and which of them is its own (what
    ``specificity`` compares)."""
    out = []
    for row in rows:
        seen: dict[str, np.ndarray] = {}
        for other, mask in zip(rows, masks):
            if other["image"] == row["image"]:
                seen.setdefault(str(other["mask"]), mask)
        out.append((list(seen.values()), list(seen).index(str(row["mask"]))))
    return out


@torch.no_grad()
def encoder_locality(objective, rows: list[dict], vl: dict, device) -> list[float]:
    """The fine-tuned visual encoder's attention locality per block (bottom-up) on the manifest's images."""
    tf, images = vl_transform(vl["recipe"]["img_size"], False), list(dict.fromkeys(str(r["image"]) for r in rows))
    x = torch.stack([tf(read_rgb(image)) for image in images]).to(device)
    vit = objective.meter.visual.vit
    return [locality(w.cpu(), vit.patch_embed.grid_size, vit.num_prefix_tokens) for w in block_attention(vit, x)]


def title(question: str, width: int = 20) -> str:
    """A question as a panel title: at most two lines of ``width`` characters."""
    return "\n".join(textwrap.wrap(question, width, max_lines=2, placeholder="..."))


def draw(rows, maps: dict, img_size: int, out_dir: Path, *, show: int, width: float) -> dict:
    """Per scene two rows, the official map's and the token norm's: image | AbSViT bottom-up | ViT | AbSViT top-down
    for each of its questions."""
    scenes = list(dict.fromkeys(str(r["image"]) for r in rows))[:show]
    grid = []
    for scene in scenes:
        picks = [i for i, r in enumerate(rows) if str(r["image"]) == scene][:3]
        rgb = np.asarray(vl_view(img_size)(read_rgb(rows[picks[0]]["image"])), dtype=np.float32) / 255
        for kind, high in MAPS.items():
            m, suffix = maps[kind], "" if kind == "class attention" else f" ({kind})"
            grid.append([{"image": rgb, "title": f"image{suffix}"},
                         {"image": rgb, "map": unit(m["bottom-up"][picks[0]], high), "title": f"AbSViT bottom-up{suffix}"},
                         {"image": rgb, "map": unit(m["vit"][picks[0]], high), "title": f"ViT{suffix}"}]
                        + [{"image": rgb, "map": unit(m["top-down"][i], high), "title": title(rows[i]["question"])}
                           for i in picks])
    return save_grid(out_dir / "fig5_vqa", grid, width=width,
                     colorbar_label="attention (display-normalised; rows: class-token attention, token norm)")


def make_figure5(absvit_model, vit_model, manifest, out_dir, *, show: int = 4, width: float = 7.0, label: str = "",
                 tracking_uri=None, track: bool = True, run_name=None, preset=None, run=None) -> dict:
    """Figure 5 and its scores under ``out_dir`` from the two VQA runs' ``model.pth``; MLflow unless ``track=False``."""
    start, out_dir = time.time(), Path(out_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    absvit, a_vl = load_finetuned(absvit_model, device=device)
    vit, v_vl = load_finetuned(vit_model, device=device)
    if not absvit.meter.visual.top_down:
        raise UsageError(f"--absvit-model {absvit_model}: its visual encoder is {a_vl['encoder_model']} without a "
                         "top-down path; expected the AbSViT VQA run's model.pth (are the two models swapped?)")
    if isinstance(vit.meter.visual.vit, AbSViT):
        raise UsageError(f"--vit-model {vit_model}: its visual encoder is {v_vl['encoder_model']}; expected the plain "
                         "ViT VQA run's model.pth, the bottom-up baseline (are the two models swapped?)")
    rows = read_manifest(manifest)
    size = a_vl["recipe"]["img_size"]
    kinds = {"top-down": (absvit, a_vl, True), "bottom-up": (absvit, a_vl, False), "vit": (vit, v_vl, False)}
    maps = {kind: {att: maps_of(model, rows, vl, top_down=top_down, kind=kind, device=device)
                   for att, (model, vl, top_down) in kinds.items()} for kind in MAPS}
    masks = [view_mask(r["mask"], size) for r in rows]
    scene = scene_masks(rows, masks)
    localities = {name: encoder_locality(model, rows, vl, device) for name, (model, vl) in
                (("absvit", (absvit, a_vl)), ("vit", (vit, v_vl)))}
    scores = [{"model": display_name(vl["encoder_model"]), "attention": "bottom-up" if att == "vit" else att,
               "map": kind, "questions": len(rows), **map_scores(maps[kind][att], masks, high=high),
               "specificity": float(np.nanmean([specificity(m, ms, k, high) for m, (ms, k) in zip(maps[kind][att], scene)])),
               "map_shift": map_shift(rows, maps[kind][att], high),
               **{f"locality_{b + 1}": v for b, v in enumerate(localities["vit" if att == "vit" else "absvit"])}}
              for kind, high in MAPS.items() for att, (_, vl, _) in kinds.items()]
    figure = draw(rows, maps, size, out_dir, show=show, width=width)
    chance = pointing_chance(masks, maps["class attention"]["vit"][0].shape)
    caption = (CAPTION + f" Encoders: {display_name(a_vl['encoder_model'])} and {display_name(v_vl['encoder_model'])}."
               + (f" {label}" if label else ""))
    frame = pd.DataFrame(scores)
    write_text(out_dir / "fig5.csv", frame.round(4).to_csv(index=False))
    result = {"absvit": str(absvit_model), "vit": str(vit_model), "manifest": str(manifest), "rows": scores,
              "locality": {a_vl["encoder_model"]: localities["absvit"], v_vl["encoder_model"]: localities["vit"]},
              "pointing_chance": chance, "caption": caption, "figure": figure, "seed": a_vl["recipe"]["seed"],
              "seconds": round(time.time() - start, 2)}
    write_json(out_dir / "fig5.json", result)
    metrics = {f"{att}{'' if kind == 'class attention' else '.token_norm'}.{m}": row[m]
               for row, (kind, att) in zip(scores, itertools.product(MAPS, kinds))
               for m in ("selectivity", "selectivity_raw", "specificity", "pointing", "map_shift") if not np.isnan(row[m])}
    metrics.update({f"{kind}.locality.block_{b + 1}": v for kind, blocks in localities.items() for b, v in enumerate(blocks)})
    tags = run_tags("vl-figure", preset, run or "vl", seed=result["seed"])
    with Tracker(run_name or "vl-figure", uri=tracking_uri, enabled=track, tags=tags,
                 params={"absvit_model": str(absvit_model), "vit_model": str(vit_model), "manifest": str(manifest)}) as tracker:
        tracker.log_metrics(metrics)
        for path in (figure["png"], figure["pdf"], out_dir / "fig5.csv", out_dir / "fig5.json"):
            tracker.log_artifact(path)
    return result
