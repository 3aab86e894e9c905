"""Vectorised ImageNet-C glass blur, pixel-identical to ``imagecorruptions.glass_blur``.

The library blurs, then for each iteration walks the inner pixels in descending (h, w) order
and does ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` with ``(h', w') = (h + dy, w + dx)``,
``dx, dy = np.random.randint(-d, d, size=(2,))``. On an (H, W, 3) array ``x[h, w]`` is a
view, so that "swap" is really the copy ``x[h, w] = x[h', w']`` (the second assignment
writes back what was just copied); this bug is part of ImageNet-C and is reproduced here.

The copies are sequential: if (h', w') was already visited in this pass (it lies in the
visited rectangle and after (h, w) in row-major order) it holds its own new value,
otherwise its value from the start of the pass. So the new value of pixel p is the old value
at t(r), where r is the end of the chain p -> t(p) -> t(t(p)) ... followed while the target
was already visited. The chain ends are found by pointer doubling, on an index map that
is composed over the iterations and applied to the pixels once.

Random numbers: one ``randint(-d, d, size=(n, 2))`` call draws the same stream as the
library's n calls of ``size=(2,)`` (legacy RandomState, one 32-bit draw per value, no
buffering between calls), and leaves the global RNG in the same state.
"""
from __future__ import annotations

import numpy as np
from skimage.filters import gaussian as skimage_gaussian

# sigma, max_delta, iterations (imagecorruptions 1.1.2)
_PARAMS = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)]


def shuffle_map(height: int, width: int, delta: int, iterations: int) -> np.ndarray:
    """Flat source index per pixel after the library's local shuffle (consumes np.random)."""
    src = np.arange(height * width)
    hs = np.arange(height - delta, delta, -1)
    ws = np.arange(width - delta, delta, -1)
    if len(hs) == 0 or len(ws) == 0:
        return src
    # visited pixels in the library's loop order
    h = np.repeat(hs, len(ws))
    w = np.tile(ws, len(hs))
    p = h * width + w
    for _ in range(iterations):
        d = np.random.randint(-delta, delta, size=(len(p), 2))
        h2 = h + d[:, 1]
        w2 = w + d[:, 0]
        q = h2 * width + w2
        visited_before = (q > p) & (h2 > delta) & (h2 <= height - delta) & (w2 > delta) & (w2 <= width - delta)
        # target per pixel (identity outside the visited rectangle) and chain links
        target = np.arange(height * width)
        target[p] = q
        nxt = np.arange(height * width)
        nxt[p[visited_before]] = q[visited_before]
        # pointer doubling until every link points at its chain's end
        while True:
            jumped = nxt[nxt]
            if np.array_equal(jumped, nxt):
                break
            nxt = jumped
        root = nxt[p]
        new = src.copy()
        new[p] = src[target[root]]
        src = new
    return src


def glass_blur(x, severity: int = 1, gaussian=skimage_gaussian) -> np.ndarray:
    """Same contract as ``imagecorruptions.corruptions.glass_blur`` (PIL image or array in,
    float64 array in [0, 255] out), for (H, W, C) images. ``gaussian``: scikit-image's, which the
    library blurs with, or any function with its signature (``channel_axis`` included)."""
    c = _PARAMS[severity - 1]
    x = np.uint8(gaussian(np.array(x) / 255., sigma=c[0], channel_axis=-1) * 255)
    if x.ndim != 3:
        raise ValueError(f"glass_blur expects an (H, W, C) image, got shape {x.shape}")
    height, width = x.shape[:2]
    src = shuffle_map(height, width, c[1], c[2])
    x = x.reshape(height * width, -1)[src].reshape(x.shape)
    return np.clip(gaussian(x / 255., sigma=c[0], channel_axis=-1), 0, 1) * 255
