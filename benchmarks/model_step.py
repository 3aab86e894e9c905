"""Training-step cost of AbSViT against timm's ViT of the same size, measured in one run.

    python benchmarks/model_step.py                  # tiny and small, CPU (and CUDA if present)
    python benchmarks/model_step.py --sizes tiny --batch 4 --iters 3

One step = forward + backward of the training loss (AbSViT: mean of both passes' CE +
0.1 L_var; ViT: CE). Peak memory is torch's allocator peak on CUDA; on CPU it is the rise
of the process's peak RSS during the steps over its RSS with the model built, measured in
a fresh process per model so that one measurement cannot hide another. Target:
AbSViT step time <= 2.1x ViT.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _measure(name: str, device: str, batch: int, warmup: int, iters: int, threads: int) -> dict:
    import timm

    import absvit.models  # noqa: F401  (registers the models)

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model(name).to(device).train()
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        if hasattr(model, "forward_train"):
            out = model.forward_train(x)
            loss = (F.cross_entropy(out.logits_bottom_up, y) + F.cross_entropy(out.logits, y)) / 2 + 0.1 * out.var_loss
        else:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rss0 = _rss_mib()
    for _ in range(warmup):
        step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
    return {"step_ms": 1000 * statistics.median(times), "peak_mib": peak}


def _in_fresh_process(*args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "base"])
    ap.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    ap.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()

    rows = []
    for device in args.devices:
        batch = args.batch or (64 if device == "cuda" else 8)
        for size in args.sizes:
            vit = _in_fresh_process(f"vit_{size}_patch16_224", device, batch, args.warmup, args.iters, args.threads)
            abs_ = _in_fresh_process(f"absvit_{size}_patch16_224", device, batch, args.warmup, args.iters, args.threads)
            rows.append({
                "device": device, "size": size, "batch": batch,
                "vit_step_ms": vit["step_ms"], "absvit_step_ms": abs_["step_ms"],
                "time_ratio": abs_["step_ms"] / vit["step_ms"],
                "vit_peak_mib": vit["peak_mib"], "absvit_peak_mib": abs_["peak_mib"],
                "mem_ratio": abs_["peak_mib"] / vit["peak_mib"],
            })
    table = pd.DataFrame(rows)
    print(f"torch {torch.__version__}, {args.threads} CPU threads, median of {args.iters} steps after {args.warmup} warm-up")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("target: time_ratio <= 2.10")


if __name__ == "__main__":
    main()
