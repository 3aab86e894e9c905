"""The appendix figures drawn: panel grids of images, attention maps overlaid on them, decoded images.

A grid is rows of panels; a panel is a dict with ``image`` (H, W, 3 RGB in [0, 1]), optionally ``map``
(a display-normalised attention map in [0, 1] on any grid, drawn over the image with a colour bar
for the figure) and ``title`` (else the column's title, on the first row); None leaves the cell blank. Each grid is written as PNG and vector
PDF, 7 in wide by default (a two-column paper's \\textwidth).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from absvit.figures.scores import DISPLAY_HIGH, display
from absvit.io import write_bytes

CMAP = "jet"
OVERLAY_ALPHA = 0.5
DPI = 200


def _upsample(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(amap.astype(np.float32), mode="F").resize((size[1], size[0]), Image.BILINEAR))


def save_grid(stem, rows: list[list[dict | None]], *, width: float = 7.0, row_labels: list[str] | None = None,
              col_titles: list[str] | None = None, colorbar_label: str | None = None, suptitle: str | None = None) -> dict:
    """Write ``<stem>.png`` and ``<stem>.pdf``; returns their paths and the layout (rows, cols, panels, axes).

    One function for one figure's fixed layout in inches (margins, panels, titles, colour bar): the arithmetic
    reads best in one place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    nrows, ncols = len(rows), max(len(r) for r in rows)
    has_map = any(p is not None and p.get("map") is not None for r in rows for p in r)
    per_panel = any(p is not None and p.get("title") for r in rows for p in r)  # titles on every row
    # a fixed layout (inches), cheaper than matplotlib's constrained layout and the same for every run
    left, right, gap = (0.22 if row_labels else 0.02), (0.6 if has_map else 0.02), 0.03
    lines = max(((p.get("title") or "").count("\n") + 1 for r in rows for p in r if p is not None), default=1)
    title_h = 0.07 + 0.1 * lines if per_panel else 0.0  # 7-pt titles, one or more lines
    top = (0.28 if suptitle else 0.02) + (0.17 if col_titles and not per_panel else 0.0)
    cell = (width - left - right - (ncols - 1) * gap) / ncols
    height = top + nrows * (title_h + cell) + (nrows - 1) * gap + 0.03
    fig = plt.figure(figsize=(width, height))
    panels = 0
    for i, row in enumerate(rows):
        y = height - top - (i + 1) * (title_h + cell) - i * gap
        for j, p in enumerate(row):
            if p is None:
                continue
            ax = fig.add_axes([(left + j * (cell + gap)) / width, y / height, cell / width, cell / height])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            panels += 1
            ax.imshow(p["image"], interpolation="nearest")
            if p.get("map") is not None:
                up = _upsample(p["map"], p["image"].shape[:2])
                ax.imshow(np.ma.masked_less_equal(up, 0), cmap=CMAP, vmin=0, vmax=1, alpha=OVERLAY_ALPHA,
                          interpolation="nearest")
            title = p.get("title") or (col_titles[j] if col_titles and i == 0 and j < len(col_titles) else None)
            if title:
                ax.set_title(title, fontsize=7, pad=2)
            if row_labels and j == 0:
                ax.set_ylabel(row_labels[i], fontsize=7, labelpad=2)
    if has_map:
        span = min(height - top - title_h - 0.05, 2.6)
        bar_ax = fig.add_axes([(width - right + 0.08) / width, (height - top - title_h - span) / height,
                               0.1 / width, span / height])
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=CMAP), cax=bar_ax)
        bar.set_label(colorbar_label or "attention", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    if suptitle:
        fig.suptitle(suptitle, fontsize=8, y=1 - 0.05 / height, va="top")
    stem = Path(stem)
    out = {"rows": nrows, "cols": ncols, "panels": panels, "axes": len(fig.axes), "width_in": width,
           "height_in": round(height, 3)}
    for ext, kw in (("png", {"dpi": DPI}), ("pdf", {})):
        buffer = io.BytesIO()  # in memory first: the size is checked against the free space before writing
        fig.savefig(buffer, format=ext, **kw)
        write_bytes(stem.with_suffix(f".{ext}"), buffer.getbuffer())
        out[ext] = str(stem.with_suffix(f".{ext}"))
    plt.close(fig)
    return out


def unit(amap, high: float = DISPLAY_HIGH):
    """A map as shown: display-normalised (``display(amap, high)``), scaled to [0, 1]."""
    shown = display(amap, high)
    return shown / shown.max() if shown.max() > 0 else shown


def draw_figures(r: dict, scenes, names: list[str], out_dir: Path, *, alphas, prior_scale: float, show: int,
                 width: float) -> dict:
    shown = list(range(min(show, len(scenes))))
    ncols = 2 + max(len(scenes[i].objects) for i in shown)
    index = {p: n for n, p in enumerate(r["pairs"])}
    fig1 = [[{"image": r["rgb"][i], "title": "image"}, {"image": r["rgb"][i], "map": unit(r["bu"][i]), "title": "bottom-up"}]
            + [{"image": r["rgb"][i], "map": unit(r["td"][prior_scale][index[i, k]]),
                "title": f"top-down: {names[o.class_index]}"} for k, o in enumerate(scenes[i].objects)]
            + [None] * (ncols - 2 - len(scenes[i].objects)) for i in shown]
    fig3 = [[{"image": r["rgb"][i]}] + [{"image": r["rgb"][i], "map": unit(r["td"][a][index[i, 0]])} for a in alphas]
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
