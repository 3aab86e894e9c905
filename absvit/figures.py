"""The appendix figures (``absvit figures``): top-down attention you can see and measure.

- Fig. 1: per scene, the image, the bottom-up attention and the top-down attention for each object's
  prior (a class prior = that class's head row, its mask scaled by ``prior_scale``, 40 as in the
  official demo).
- Fig. 3: the feedback scale alpha swept (default 1, 2, 5, 10, 40) with the prior on one object.
- Fig. 4: image | decode(x0_bu) | decode(x0_td) | decode(x0_bu + x0_td) per object prior, with the
  linear decoder of ``absvit decoder`` (absvit.decoder).

A map is the per-patch L2 norm of the tokens after the first depth - 3 blocks (``AbSViT.attention_map``;
for the plain ViT baseline the same blocks' output through timm's ``forward_intermediates``), shown as
``clamp(map - (0.7 max + 0.3 min), 0)`` scaled to [0, 1]. Scores on every (scene, object prior) pair
with a mask, per model and alpha: selectivity, the pointing game and Fig. 4's reconstruction error
inside vs outside the prior's object (pure functions below). Outputs: fig1_attention / fig3_alpha /
fig4_decoder (.png, .pdf), figures.{csv,md,tex,json}, mirrored into MLflow.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from absvit.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

# numpy, torch, matplotlib and pandas are imported where they are used: absvit.cli imports this module to
# register its verbs, and every verb, `absvit submit` of each pipeline job included, must start light.

ALPHAS = (1.0, 2.0, 5.0, 10.0, 40.0)
PRIOR_SCALE = 40.0  # the official demo's scale of a class prior's mask
CHUNK = 64


# -- scores: pure functions of (map, mask) -------------------------------------------------
def display(amap: np.ndarray) -> np.ndarray:
    """The official demo's display normalisation: ``clamp(map - (0.7 max + 0.3 min), 0)``."""
    import numpy as np

    amap = np.asarray(amap, dtype=np.float64)
    return np.clip(amap - (0.7 * amap.max() + 0.3 * amap.min()), 0, None)


def coverage(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The share of each cell of a ``shape`` grid (the map's patches) that ``mask`` covers."""
    import numpy as np

    mask = np.asarray(mask, dtype=np.float64)
    (H, W), (h, w) = mask.shape, shape
    if H % h == 0 and W % w == 0:
        return mask.reshape(h, H // h, w, W // w).mean(axis=(1, 3))
    from PIL import Image

    return np.asarray(Image.fromarray(mask.astype(np.float32), mode="F").resize((w, h), Image.BOX), dtype=np.float64)


def selectivity(amap: np.ndarray, mask: np.ndarray) -> float:
    """Attention mass inside ``mask`` divided by the mask's share of the image: 1 = no selectivity,
    1 / share = all mass inside. ``amap`` (h, w) is non-negative; ``mask`` (H, W) boolean, any multiple of
    the map's grid (or any size: area-averaged). A map without mass prefers nothing: 1."""
    import numpy as np

    amap = np.asarray(amap, dtype=np.float64)
    if (amap < 0).any():
        raise ValueError("selectivity needs a non-negative map")
    cov = coverage(mask, amap.shape)
    share, total = cov.mean(), amap.sum()
    if share == 0:
        raise ValueError("empty mask")
    return 1.0 if total == 0 else float((amap * cov).sum() / total / share)


def pointing_hit(amap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's maximum (first, on ties) falls in a cell that lies mostly (>= half) inside the mask."""
    import numpy as np

    amap = np.asarray(amap)
    cell = np.unravel_index(int(np.argmax(amap)), amap.shape)
    return bool(coverage(mask, amap.shape)[cell] >= 0.5)


def pointing_game(maps, masks) -> float:
    """Fraction of (map, mask) pairs whose maximum lies inside the mask."""
    hits = [pointing_hit(m, k) for m, k in zip(maps, masks)]
    return sum(hits) / len(hits) if hits else float("nan")


def region_mse(recon: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean squared error of (C, H, W) images inside and outside the (H, W) mask (NaN for an empty region)."""
    import numpy as np

    err = ((np.asarray(recon, np.float64) - np.asarray(target, np.float64)) ** 2).mean(axis=0)
    mask = np.asarray(mask, dtype=bool)
    inside = float(err[mask].mean()) if mask.any() else float("nan")
    outside = float(err[~mask].mean()) if (~mask).any() else float("nan")
    return inside, outside


# -- maps -------------------------------------------------------------------------------------
def vit_attention_map(vit, x):
    """A plain timm ViT's map: per-patch L2 norm of the tokens after its first depth - 3 blocks, (B, H, W)."""
    import torch

    with torch.no_grad():
        feats = vit.forward_intermediates(x, indices=[len(vit.blocks) - 4], stop_early=True, intermediates_only=True)
    return feats[0].norm(dim=1)


def _chunks(fn, x, priors=None):
    import torch

    outs = [fn(x[i:i + CHUNK], None if priors is None else priors[i:i + CHUNK]) for i in range(0, len(x), CHUNK)]
    return [torch.cat(o) for o in zip(*outs)] if isinstance(outs[0], tuple) else torch.cat(outs)


def class_names(classes: list[str]) -> list[str]:
    """Short display names: the embedded shapes, ImageNet's first synonym, else the folder name."""
    from absvit.data.synthetic import SHAPES, WNIDS

    embedded = dict(zip(WNIDS, SHAPES))
    if all(c in embedded for c in classes):
        return [embedded[c] for c in classes]
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-1k")
        index = {w: i for i, w in enumerate(info.label_names())}
        return [info.index_to_description(index[c]).split(",")[0] if c in index else c for c in classes]
    except Exception:  # noqa: BLE001  (no names: the wnids)
        return list(classes)


def _load_scene(scene, size: int, mean, std):
    """(RGB array (S, S, 3) in [0, 1], normalised tensor (3, S, S), [mask (S, S) or None per object])."""
    import numpy as np
    import torch
    from PIL import Image

    from absvit.data.scenes import load_mask

    with Image.open(scene.image) as im:
        rgb = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    x = (torch.from_numpy(rgb).permute(2, 0, 1) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return rgb, x.float(), [load_mask(o.mask, size) for o in scene.objects]


def _load_models(absvit_checkpoint, vit_checkpoint, absvit_model, vit_model, decoder_path):
    from absvit.decoder import LinearDecoder
    from absvit.evaluate import load_model
    from absvit.models import AbSViT

    absvit, classes, a_size, ckpt = load_model(absvit_checkpoint, model_name=absvit_model)
    vit, _, v_size, _ = load_model(vit_checkpoint, model_name=vit_model)
    if not isinstance(absvit, AbSViT):
        raise UsageError(f"--absvit-checkpoint {absvit_checkpoint}: a {type(absvit).__name__}, not an AbSViT model")
    if isinstance(vit, AbSViT):
        raise UsageError(f"--vit-checkpoint {vit_checkpoint}: an AbSViT; give a plain ViT (the bottom-up baseline)")
    decoder = LinearDecoder.load(decoder_path)
    if decoder.model != absvit.pretrained_cfg["architecture"] or decoder.weight.shape[1] != absvit.embed_dim:
        raise UsageError(f"--decoder {decoder_path}: fitted for {decoder.model or 'another model'}, "
                         f"not {absvit.pretrained_cfg['architecture']} (run `absvit decoder` on this checkpoint)")
    source = {"seed": (ckpt.get("run") or {}).get("recipe", {}).get("seed"),  # a released file has none
              "source_run_id": ckpt.get("mlflow_run_id")}  # the pretraining run that wrote it
    return absvit.eval(), vit.eval(), decoder, classes, a_size, v_size, source


def analyse(absvit, vit, decoder, scenes, *, a_size: int, v_size: int, alphas, prior_scale: float,
            show: int) -> dict:
    """Every map and reconstruction error per scene, (scene, object) pair and alpha; decoded images (at
    ``prior_scale``) only for the first ``show`` scenes, which the figures draw."""
    import torch

    from absvit.decoder import patch_tokens

    cfg = absvit.pretrained_cfg
    loaded = [_load_scene(s, a_size, cfg["mean"], cfg["std"]) for s in scenes]
    vit_in = loaded if v_size == a_size else [_load_scene(s, v_size, vit.pretrained_cfg["mean"],
                                                          vit.pretrained_cfg["std"]) for s in scenes]
    x = torch.stack([t for _, t, _ in loaded])
    masks = [m for _, _, m in loaded]
    grid = absvit.patch_embed.grid_size
    pairs = [(i, k) for i, s in enumerate(scenes) for k in range(len(s.objects))]
    xp = x[[i for i, _ in pairs]]
    priors = torch.tensor([scenes[i].objects[k].class_index for i, k in pairs])
    kept = [n for n, (i, _) in enumerate(pairs) if i < show]

    def errors(recon):  # (inside, outside) per pair, None without a mask
        return [None if masks[i][k] is None else region_mse(rec.numpy(), xp[n].numpy(), masks[i][k])
                for n, ((i, k), rec) in enumerate(zip(pairs, recon))]

    with torch.no_grad():
        bu = _chunks(lambda b, _: absvit.attention_map(b, top_down=False), x).numpy()
        vmap = _chunks(lambda b, _: vit_attention_map(vit, b), torch.stack([t for _, t, _ in vit_in])).numpy()
        x0_bu = _chunks(lambda b, _: patch_tokens(absvit, absvit.first_layer_inputs(b, top_down=False)[0]), xp)
        mse_bu = errors(decoder.decode(x0_bu, grid))
        td, mse, dec = {}, {}, {}
        for a in sorted(set(alphas) | {prior_scale}):
            td[a] = _chunks(lambda b, p: absvit.attention_map(b, prior=p, alpha=a), xp, priors).numpy()
            t_ = patch_tokens(absvit, _chunks(lambda b, p: absvit.first_layer_inputs(b, prior=p, alpha=a)[1], xp, priors))
            mse[a] = errors(decoder.decode(x0_bu + t_, grid))
            if a == prior_scale:
                dec = {"bu": x0_bu[kept], "td": t_[kept], "sum": x0_bu[kept] + t_[kept]}
    decoded = {k: decoder.to_rgb(decoder.decode(v, grid)).permute(0, 2, 3, 1).numpy() for k, v in dec.items()}
    return {"rgb": [r for r, _, _ in loaded], "masks": masks, "vit_masks": [m for _, _, m in vit_in], "pairs": pairs,
            "bu": bu, "vit": vmap, "td": td, "mse_bu": mse_bu, "mse": mse,
            "decoded": {k: {pairs[n]: v[j] for j, n in enumerate(kept)} for k, v in decoded.items()}}


def score_rows(r: dict, *, absvit_name: str, vit_name: str, alphas) -> list[dict]:
    """One row per (model, attention, alpha): mean selectivity (shown / raw map), pointing game (%), and the
    reconstruction MSE inside / outside the prior's object (AbSViT: decode(x0_bu + x0_td); bottom-up: x0_bu)."""
    import numpy as np

    masked = [(n, i, k) for n, (i, k) in enumerate(r["pairs"]) if r["masks"][i][k] is not None]

    def mean(values):
        return float(np.nanmean(values)) if len(values) else float("nan")

    def row(model, kind, alpha, maps, errors, masks):
        sel = [selectivity(display(maps(n, i)), masks[i][k]) for n, i, k in masked]
        raw = [selectivity(maps(n, i), masks[i][k]) for n, i, k in masked]
        hits = [pointing_hit(maps(n, i), masks[i][k]) for n, i, k in masked]
        mse = [errors[n] for n, _, _ in masked] if errors else []
        return {"model": model, "attention": kind, "alpha": alpha, "pairs": len(masked), "selectivity": mean(sel),
                "selectivity_raw": mean(raw), "pointing": 100 * mean(hits),
                "mse_inside": mean([m[0] for m in mse]), "mse_outside": mean([m[1] for m in mse])}

    rows = [row(absvit_name, "bottom-up", None, lambda n, i: r["bu"][i], r["mse_bu"], r["masks"])]
    rows += [row(absvit_name, "top-down", a, lambda n, i, a=a: r["td"][a][n], r["mse"][a], r["masks"]) for a in alphas]
    rows.append(row(vit_name, "bottom-up", None, lambda n, i: r["vit"][i], None, r["vit_masks"]))
    return rows


def _unit(amap):
    shown = display(amap)
    return shown / shown.max() if shown.max() > 0 else shown


def draw_figures(r: dict, scenes, names: list[str], out_dir: Path, *, alphas, prior_scale: float, show: int,
                 width: float) -> dict:
    from absvit.plots import save_grid

    shown = list(range(min(show, len(scenes))))
    ncols = 2 + max(len(scenes[i].objects) for i in shown)
    index = {p: n for n, p in enumerate(r["pairs"])}
    fig1 = [[{"image": r["rgb"][i], "title": "image"}, {"image": r["rgb"][i], "map": _unit(r["bu"][i]), "title": "bottom-up"}]
            + [{"image": r["rgb"][i], "map": _unit(r["td"][prior_scale][index[i, k]]),
                "title": f"top-down: {names[o.class_index]}"} for k, o in enumerate(scenes[i].objects)]
            + [None] * (ncols - 2 - len(scenes[i].objects)) for i in shown]
    fig3 = [[{"image": r["rgb"][i]}] + [{"image": r["rgb"][i], "map": _unit(r["td"][a][index[i, 0]])} for a in alphas]
            for i in shown[:3]]
    pairs4 = [(i, k) for i in shown for k in range(len(scenes[i].objects))][:6]
    d = r["decoded"]
    fig4 = [[{"image": r["rgb"][i]}] + [{"image": d[part][i, k]} for part in ("bu", "td", "sum")] for i, k in pairs4]
    label = "attention (display-normalised)"
    return {"fig1": save_grid(out_dir / "fig1_attention", fig1, width=width, colorbar_label=label),
            "fig3": save_grid(out_dir / "fig3_alpha", fig3, width=width, colorbar_label=label,
                              col_titles=["image"] + [rf"$\alpha$ = {a:g}" for a in alphas],
                              row_labels=[f"prior: {names[scenes[i].objects[0].class_index]}" for i in shown[:3]]),
            "fig4": save_grid(out_dir / "fig4_decoder", fig4, width=min(width, 4.5),
                              col_titles=["image", r"dec($x_0^{bu}$)", r"dec($x_0^{td}$)", r"dec($x_0^{bu} + x_0^{td}$)"],
                              row_labels=[f"prior: {names[scenes[i].objects[k].class_index]}" for i, k in pairs4])}


def write_table(rows: list[dict], out_dir: Path, *, caption: str, note: str = "") -> None:
    import pandas as pd

    from absvit.tables import _markdown, _tex, _write, display_name

    frame = pd.DataFrame(rows)
    frame["alpha"] = frame["alpha"].map(lambda a: "--" if a is None or pd.isna(a) else f"{a:g}")
    frame["model"] = frame["model"].map(display_name)
    _write(out_dir / "figures.csv", frame.round(4).to_csv(index=False))
    _write(out_dir / "figures.md", f"## Top-down attention (appendix Figs. 1, 3, 4)\n\n{caption}\n\n"
           + _markdown(frame.round(3), index=False) + "\n" + (f"\n{note}\n" if note else ""))
    cell = (lambda v, f: "--" if pd.isna(v) else f.format(v))
    tex = pd.DataFrame({"Model": frame["model"].map(_tex), "Attention": frame["attention"], r"$\alpha$": frame["alpha"],
                        "Selectivity": frame["selectivity"].map(lambda v: cell(v, "{:.2f}")),
                        "Sel.\\ (raw)": frame["selectivity_raw"].map(lambda v: cell(v, "{:.2f}")),
                        r"Pointing (\%)": frame["pointing"].map(lambda v: cell(v, "{:.1f}")),
                        "MSE in": frame["mse_inside"].map(lambda v: cell(v, "{:.3f}")),
                        "MSE out": frame["mse_outside"].map(lambda v: cell(v, "{:.3f}"))})
    latex = tex.style.hide(axis="index").to_latex(hrules=True, position="t", position_float="centering",
                                                  column_format="llrrrrrr", caption=_tex(caption), label="tab:figures")
    _write(out_dir / "figures.tex", latex)


CAPTION = ("Top-down attention on multi-object scenes: selectivity = attention mass inside the prior's object / the "
           "object's share of the image (1 = none; on the displayed map, and on the raw map), pointing game = % of "
           "(scene, prior) pairs whose map peaks inside the prior's object, and the Fig. 4 decoder's MSE (normalised "
           "pixels) inside / outside the prior's object for decode(x0_bu + x0_td) (bottom-up row: decode(x0_bu)).")


def make_figures(absvit_checkpoint, vit_checkpoint, decoder_path, scenes_path, out_dir, *, absvit_model=None,
                 vit_model=None, alphas=ALPHAS, prior_scale: float = PRIOR_SCALE, show: int = 4, width: float = 7.0,
                 label: str = "", tracking_uri=None, track: bool = True, run_name=None, preset=None, run=None) -> dict:
    """Figures 1, 3, 4, the score table and JSON under ``out_dir``; logged to MLflow unless ``track=False``."""
    import numpy as np

    from absvit.data.scenes import read_scenes
    from absvit.io import write_json
    from absvit.tracking import Tracker, run_tags

    start, out_dir, alphas = time.time(), Path(out_dir), [float(a) for a in alphas]
    absvit, vit, decoder, classes, a_size, v_size, source = _load_models(
        absvit_checkpoint, vit_checkpoint, absvit_model, vit_model, decoder_path)
    scenes = read_scenes(scenes_path, num_classes=absvit.num_classes)
    names = class_names(classes)
    r = analyse(absvit, vit, decoder, scenes, a_size=a_size, v_size=v_size, alphas=alphas, prior_scale=prior_scale,
                show=show)
    a_name, v_name = absvit.pretrained_cfg["architecture"], vit.pretrained_cfg["architecture"]
    rows = score_rows(r, absvit_name=a_name, vit_name=v_name, alphas=alphas)
    figures = draw_figures(r, scenes, names, out_dir, alphas=alphas, prior_scale=prior_scale, show=show, width=width)
    caption = CAPTION + (f" {label}" + ("" if label.endswith(".") else ".") if label else "")
    grid = absvit.patch_embed.grid_size
    chance = [float((coverage(m, grid) >= 0.5).mean()) for ms in r["masks"] for m in ms if m is not None]
    chance = 100 * float(np.mean(chance)) if chance else None
    note = "" if chance is None else (f"Pointing game by chance (a random patch lies mostly inside the prior's object): "
                                      f"{chance:.1f}%. ")
    note += f"Figures: {', '.join(Path(f['pdf']).stem for f in figures.values())} (.png, .pdf) in {out_dir}."
    write_table(rows, out_dir, caption=caption, note=note)
    result = {"absvit": {"model": a_name, "checkpoint": str(absvit_checkpoint)},
              "vit": {"model": v_name, "checkpoint": str(vit_checkpoint)}, "decoder": str(decoder_path),
              "decoder_meta": decoder.meta, "scenes": str(scenes_path), "images": len(scenes), "pairs": len(r["pairs"]),
              "alphas": alphas, "prior_scale": prior_scale, "caption": caption, "rows": rows, "figures": figures,
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
        metrics.update({f"{key}.{m}": row[m] for m in ("selectivity", "selectivity_raw", "pointing", "mse_inside",
                                                       "mse_outside") if not np.isnan(row[m])})
    tracker.log_metrics(metrics)
    for f in [*(v[ext] for v in figures.values() for ext in ("png", "pdf")),
              *(out_dir / f"figures.{ext}" for ext in ("csv", "md", "tex", "json"))]:
        tracker.log_artifact(f)
    tracker.finish()
    return result


def add_arguments(verbs, data) -> None:
    """The figures stage's verbs: ``data embedded-scenes``, ``decoder`` and ``figures`` (called from absvit.cli)."""
    from absvit.cli import _tracking_args

    def scenes(a):
        from absvit.data.scenes import generate_scenes

        generate_scenes(a.out, seed=a.seed, count=a.count, size=a.size)

    p = data.add_parser("embedded-scenes", help="multi-object scenes for the appendix figures: images, masks, manifest.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--size", type=int, default=64)
    p.set_defaults(func=scenes)

    def decoder(a):
        from absvit.decoder import train_decoder

        train_decoder(a.checkpoint, a.data, a.out, model_name=a.model, max_images=a.max_images or None,
                      batch_size=a.batch_size, workers=a.workers, seed=a.seed)

    p = verbs.add_parser("decoder", help="fit the appendix Fig. 4 linear decoder (first-layer tokens -> patch pixels)")
    p.add_argument("--checkpoint", required=True, help="the AbSViT's weights (pretraining model.pth or a released file)")
    p.add_argument("--model", default=None, help="timm name (default: the one the checkpoint records)")
    p.add_argument("--data", required=True, help="the pretraining images: a train folder <wnid>/*")
    p.add_argument("--out", required=True, help="decoder file (.pth)")
    p.add_argument("--max-images", type=int, default=1000, help="fit on a fixed random subset of N images (0: all)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=decoder)

    def figures(a):
        make_figures(a.absvit_checkpoint, a.vit_checkpoint, a.decoder, a.scenes, a.out_dir, absvit_model=a.absvit_model,
                     vit_model=a.vit_model, alphas=a.alphas, prior_scale=a.prior_scale, show=a.show, width=a.width,
                     label=a.label, tracking_uri=a.tracking_uri, track=not a.no_mlflow, run_name=a.run_name,
                     preset=a.preset, run=a.run)

    p = verbs.add_parser("figures", help="appendix Figs. 1, 3, 4 (PNG + PDF) and their scores (figures.csv/md/tex/json)")
    p.add_argument("--absvit-checkpoint", required=True)
    p.add_argument("--absvit-model", default=None, help="timm name (default: the one the checkpoint records)")
    p.add_argument("--vit-checkpoint", required=True, help="a plain ViT of the same size: the bottom-up baseline")
    p.add_argument("--vit-model", default=None)
    p.add_argument("--decoder", required=True, help="the Fig. 4 decoder file of `absvit decoder` for this AbSViT")
    p.add_argument("--scenes", required=True, help="a folder with manifest.csv (image, object, class_index, mask)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS), help="Fig. 3 sweep (default: %(default)s)")
    p.add_argument("--prior-scale", type=float, default=PRIOR_SCALE, help="alpha of Figs. 1 and 4 (class priors)")
    p.add_argument("--show", type=int, default=4, help="scenes drawn (all are scored)")
    p.add_argument("--width", type=float, default=7.0, help="figure width in inches")
    p.add_argument("--label", default="", help="a sentence added to the table caption")
    p.add_argument("--preset", default=None, help="tag absvit.preset (default: adhoc)")
    p.add_argument("--run", default=None, help="tag absvit.run (the AbSViT's pretraining run)")
    _tracking_args(p)
    p.set_defaults(func=figures)
