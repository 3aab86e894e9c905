"""Forward + backward of the logits' bilinear upsampling: F.interpolate against resize_bilinear (matmuls).

    python benchmarks/upsample.py                        # (16, 150, 128, 128) -> 512x512, CUDA if present
    python benchmarks/upsample.py --batch 2 --iters 3    # quicker on CPU

On CUDA both run in bfloat16 (the training step's dtype), on CPU in float32. The GPU target this
serves: an AbSViT-B UperNet step (batch 16, 512x512, bf16) <= 120 ms on an H100/H200, where
F.interpolate's backward (atomic adds) took ~110 ms per call.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from absvit.models.resize import resize_bilinear

METHODS = {
    "F.interpolate": lambda x, size: F.interpolate(x, size=size, mode="bilinear", align_corners=False),
    "resize_bilinear": resize_bilinear,
}


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, x, size, grad, device, warmup, iters) -> tuple[float, float]:
    """Median ms of the forward and of forward + backward."""
    fwd, both = [], []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        y = fn(x, size)
        _sync(device)
        t1 = time.perf_counter()
        y.backward(grad)
        _sync(device)
        t2 = time.perf_counter()
        x.grad = None
        if i >= warmup:
            fwd.append(1e3 * (t1 - t0))
            both.append(1e3 * (t2 - t0))
    return statistics.median(fwd), statistics.median(both)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--classes", type=int, default=150)
    p.add_argument("--in-size", type=int, nargs=2, default=(128, 128))
    p.add_argument("--out-size", type=int, nargs=2, default=(512, 512))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    x = torch.randn(args.batch, args.classes, *args.in_size, device=device, dtype=dtype, requires_grad=True)
    size = tuple(args.out_size)
    grad = torch.randn(args.batch, args.classes, *size, device=device, dtype=dtype)
    print(f"{tuple(x.shape)} -> {size}, {dtype}, {where}; median of {args.iters} after {args.warmup} warmup")
    print(f"{'method':<16} {'forward ms':>11} {'fwd+bwd ms':>11} {'backward ms':>12}")
    for name, fn in METHODS.items():
        fwd, both = _time(fn, x, size, grad, device, args.warmup, args.iters)
        print(f"{name:<16} {fwd:>11.1f} {both:>11.1f} {both - fwd:>12.1f}")


if __name__ == "__main__":
    main()
