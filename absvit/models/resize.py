"""Bilinear resizing as two small matmuls, ``A_h @ x @ A_w^T`` over the last two dims.

The same values as ``F.interpolate(x, size, mode="bilinear", align_corners=False)`` (no antialias:
2-tap weights, source index ``(dst + 0.5) * in / out - 0.5`` clamped at 0, the upper tap clamped
to the last row/column), up- or downsampling. The point is the backward: F.interpolate's scatters
gradients with atomic adds (slow and nondeterministic on CUDA), a matmul's is another matmul.
"""
from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=64)
def interp_matrix(in_size: int, out_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(out_size, in_size) bilinear weights, align_corners=False, scale = in_size / out_size.

    Source positions in PyTorch's accumulation type (float64 for float64, else float32), so that the
    weights round like F.interpolate's: its kernels compute ``scale * (dst + 0.5) - 0.5`` with a fused
    multiply-add, which a float64 product of the float32 operands reproduces (it is exact)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(in_size, dtype=acc) / out_size
    src = (scale.double() * (torch.arange(out_size, dtype=acc) + 0.5).double() - 0.5).to(acc).clamp(min=0)
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = src - i0
    rows = torch.arange(out_size)
    m = torch.zeros(out_size, in_size, dtype=acc)
    m.index_put_((rows, i0), 1 - w1, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)  # at the last row/column both taps land on it
    return m.to(dtype=dtype, device=device)


def resize_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """``x`` (..., H, W) resized to ``size`` = (h, w) like F.interpolate bilinear, align_corners=False."""
    (h, w), (oh, ow) = x.shape[-2:], tuple(size)
    if (h, w) == (oh, ow):
        return x  # F.interpolate's weights are then the identity
    a_h = interp_matrix(h, oh, x.dtype, x.device)
    a_w = interp_matrix(w, ow, x.dtype, x.device)
    # rows on the small input first; the second product comes out contiguous (..., oh, ow)
    return (x.transpose(-1, -2) @ a_h.T).transpose(-1, -2) @ a_w.T
