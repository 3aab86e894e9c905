"""The scores beside the appendix figures: how much of a map's attention falls on the object its prior names.

Pure functions of a map (non-negative, on the patch grid) and an object's mask (any multiple of the grid, or any
size: area-averaged), shared by Figs. 1 / 3 / 4 and the V&L Figure 5:

- ``selectivity``: attention mass inside the object over the object's share of the image (1 = none);
- ``pointing_hit`` / ``pointing_game``: whether the map peaks inside the object (Zhang et al.'s pointing game);
- ``specificity``: selectivity on the prior's object minus the mean selectivity on the scene's other objects: 0
  for a map that ignores the prior (a bottom-up map, averaged over every object of a scene as the prior), > 0 only
  for a map that follows it, where selectivity and the pointing game also rise for a map that brightens every object;
- ``locality``: a patch query's attention mass on its 3x3 neighbourhood of the patch grid over that neighbourhood's
  uniform share (1 = uniform attention, which no prior can steer);
- ``region_mse``: a reconstruction's error inside vs outside the object (Fig. 4's decoder).

Maps are shown (and scored as "selectivity") after the official demo's ``display`` normalisation.
"""
from __future__ import annotations

import numpy as np

# What the scores mean, in the words every table and report section uses.
DEFINITIONS = ("selectivity = attention mass inside the prior's object / the object's share of the image (1 = no "
               "selectivity; on the displayed map, and on the raw map), specificity = selectivity on the prior's "
               "object minus the mean selectivity on the scene's other objects (displayed map; 0 for a map that "
               "ignores the prior), pointing game = % of (scene, prior) pairs whose map peaks inside the prior's "
               "object, and the Fig. 4 decoder's MSE (normalised pixels) of decode(x0_bu + x0_td) inside / outside the "
               "prior's object (bottom-up rows: decode(x0_bu))")
LOCALITY = ("attention locality = a patch query's attention mass on its 3x3 neighbourhood of the patch grid over that "
            "neighbourhood's uniform share, per block, bottom-up pass (1 = uniform)")
UNIFORM = 1.5  # a locality under this: attention too uniform for any prior to steer it (said in words)
CAPTION = f"Top-down attention on multi-object scenes (appendix Figs. 1, 3, 4): {DEFINITIONS}."


DISPLAY_HIGH = 0.7  # the classification demo's threshold weight; the V&L demo's (Figure 5) is 0.5
VL_DISPLAY_HIGH = 0.5


def display(amap: np.ndarray, high: float = DISPLAY_HIGH) -> np.ndarray:
    """The official demos' display normalisation: ``clamp(map - (high max + (1 - high) min), 0)``; ``high`` 0.7 in
    the classification demo (Figs. 1-3), 0.5 in the V&L demo (Figure 5)."""
    amap = np.asarray(amap, dtype=np.float64)
    return np.clip(amap - (high * amap.max() + (1 - high) * amap.min()), 0, None)


def coverage(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The share of each cell of a ``shape`` grid (the map's patches) that ``mask`` covers."""
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
    amap = np.asarray(amap, dtype=np.float64)
    if (amap < 0).any():
        raise ValueError("selectivity needs a non-negative map")
    cov = coverage(mask, amap.shape)
    share, total = cov.mean(), amap.sum()
    if share == 0:
        raise ValueError("empty mask")
    return 1.0 if total == 0 else float((amap * cov).sum() / total / share)


def specificity(amap: np.ndarray, masks, k: int, high: float = DISPLAY_HIGH) -> float:
    """The displayed map's selectivity on ``masks[k]`` (the prior's object) minus its mean selectivity on the other
    masks of the scene (None masks are left out); NaN without another object."""
    shown = display(amap, high)
    others = [selectivity(shown, m) for j, m in enumerate(masks) if j != k and m is not None]
    return selectivity(shown, masks[k]) - float(np.mean(others)) if others else float("nan")


def locality(weights, grid: tuple[int, int], num_prefix_tokens: int) -> float:
    """Attention locality of one block's weights (B, heads, N, N) on a ``grid`` of patches after
    ``num_prefix_tokens``: each patch query's mass on its 3x3 neighbourhood (itself included, cut at the borders)
    over the neighbourhood's share of the N keys, averaged over queries, heads and images."""
    import torch

    h, w = grid
    ys, xs = np.divmod(np.arange(h * w), w)
    near = torch.from_numpy((np.abs(ys[:, None] - ys[None]) <= 1) & (np.abs(xs[:, None] - xs[None]) <= 1)).float()
    patches = weights[:, :, num_prefix_tokens:, num_prefix_tokens:].float()
    share = near.sum(-1) / weights.shape[-1]
    return float(((patches * near).sum(-1) / share).mean())


def pointing_hit(amap: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's maximum (first, on ties) falls in a cell that lies mostly (>= half) inside the mask."""
    amap = np.asarray(amap)
    cell = np.unravel_index(int(np.argmax(amap)), amap.shape)
    return bool(coverage(mask, amap.shape)[cell] >= 0.5)


def pointing_game(maps, masks) -> float:
    """Fraction of (map, mask) pairs whose maximum lies inside the mask."""
    hits = [pointing_hit(m, k) for m, k in zip(maps, masks)]
    return sum(hits) / len(hits) if hits else float("nan")


def region_mse(recon: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean squared error of (C, H, W) images inside and outside the (H, W) mask (NaN for an empty region)."""
    err = ((np.asarray(recon, np.float64) - np.asarray(target, np.float64)) ** 2).mean(axis=0)
    mask = np.asarray(mask, dtype=bool)
    inside = float(err[mask].mean()) if mask.any() else float("nan")
    outside = float(err[~mask].mean()) if (~mask).any() else float("nan")
    return inside, outside


def nanmean(values) -> float:
    return float(np.nanmean(values)) if len(values) else float("nan")


def map_scores(maps, masks, *, high: float = DISPLAY_HIGH) -> dict:
    """Mean selectivity of the displayed (``display(map, high)``) and of the raw maps, and the pointing game (%),
    over (map, mask) pairs."""
    maps, masks = list(maps), list(masks)
    return {"selectivity": nanmean([selectivity(display(m, high), k) for m, k in zip(maps, masks)]),
            "selectivity_raw": nanmean([selectivity(m, k) for m, k in zip(maps, masks)]),
            "pointing": 100 * nanmean([pointing_hit(m, k) for m, k in zip(maps, masks)])}


def score_rows(r: dict, *, absvit_name: str, vit_name: str, alphas) -> list[dict]:
    """One row per (model, attention, alpha) of ``figures.maps.analyse``'s result: ``map_scores`` and the
    ``specificity`` over every (scene, object prior) pair with a mask, and the reconstruction MSE inside / outside
    the prior's object (AbSViT: decode(x0_bu + x0_td); bottom-up: decode(x0_bu))."""
    masked = [(n, i, k) for n, (i, k) in enumerate(r["pairs"]) if r["masks"][i][k] is not None]

    def row(model, kind, alpha, maps, errors, masks):
        mse = [errors[n] for n, _, _ in masked] if errors else []
        return {"model": model, "attention": kind, "alpha": alpha, "pairs": len(masked),
                **map_scores((maps(n, i) for n, i, _ in masked), (masks[i][k] for _, i, k in masked)),
                "specificity": nanmean([specificity(maps(n, i), masks[i], k) for n, i, k in masked]),
                "mse_inside": nanmean([m[0] for m in mse]), "mse_outside": nanmean([m[1] for m in mse])}

    rows = [row(absvit_name, "bottom-up", None, lambda n, i: r["bu"][i], r["mse_bu"], r["masks"])]
    rows += [row(absvit_name, "top-down", a, lambda n, i, a=a: r["td"][a][n], r["mse"][a], r["masks"]) for a in alphas]
    rows.append(row(vit_name, "bottom-up", None, lambda n, i: r["vit"][i], None, r["vit_masks"]))
    return rows


def pointing_chance(masks, grid: tuple[int, int]) -> float | None:
    """The pointing game's chance level (%): the share of patches that lie mostly inside the object, averaged over
    the masks (None without masks)."""
    shares = [float((coverage(m, grid) >= 0.5).mean()) for m in masks if m is not None]
    return 100 * float(np.mean(shares)) if shares else None
