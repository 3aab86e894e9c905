"""The GPU benchmark: the model's training step, the real pretraining loop and the segmentation step, in one run.

    make bench-gpu                                  # = python benchmarks/gpu.py: CUDA, the full table
    python benchmarks/gpu.py --device cpu --smoke   # every code path at toy size on CPU (the test runs this)

It prints one table and writes it as JSON (``results/benchmarks/gpu.json``, atomically):

- ``step``: model-only training step of timm's ViT and AbSViT Ti/S/B on one cached batch: bf16
  autocast, channels-last, fused AdamW, eager and torch.compile; img/s, peak memory, FLOPs per image
  and MFU. One step is forward + backward of the training objective (``absvit.pretrain.TrainingLoss``:
  AbSViT both passes' CE + 0.1 L_var, ViT its CE) and the optimizer step.
- ``loop``: the real pretraining loop (``absvit.pretrain``'s loaders, ``build`` and ``train_epoch``:
  paper recipe, RandAugment, repeated-augmentation sampler, mixup/cutmix, random erasing, EMA, timm's
  prefetcher, compiled as ``compile: auto`` does on CUDA) on generated 224-px JPEGs, img/s of one
  epoch after a warm-up epoch, against ``bare_step_img_s``: the same objective and optimizer on one
  cached batch, timed right after (no loader, mixup, EMA nor progress).
- ``eval``: inference img/s of the same ViT / AbSViT Ti/S/B through ``engine.accuracy`` (the evaluation and
  per-epoch validation loop: bf16 autocast, channels-last, counts kept on the device), batch 256, cached batches.
- ``segment``: one UperNet fine-tuning step (``absvit.segment``'s loss and parameter groups, AdamW,
  bf16) on AbSViT-B and ViT-B, batch 16, 512x512 crops, 150 classes; seconds per step, peak memory.

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward of the objective
(eager, batch 2, divided by 2): matmuls, convolutions and attention (2 FLOPs per multiply-add; the
elementwise work and the optimizer are not counted). MFU = img/s x FLOPs per image / the card's
peak dense bf16 FLOP/s (``PEAK_BF16`` by card name; an unknown card: MFU omitted, with a note).

It imports neither MLflow nor Snakemake (the verbs' pieces only, nothing tracked).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import absvit.models  # noqa: E402,F401  (registers the AbSViT models)
from absvit import engine, runtime  # noqa: E402
from absvit.runtime import DistInfo  # noqa: E402
from absvit.io import write_json  # noqa: E402
from absvit.pretrain import TrainingLoss, build, loaders  # noqa: E402
from absvit.progress import Progress  # noqa: E402
from absvit.recipe import PretrainRecipe  # noqa: E402

# peak dense bf16 tensor-core FLOP/s (no sparsity), by a piece of torch.cuda.get_device_name(); first match wins
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("GH200", 989e12),
             ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12)]
SIZES = ("tiny", "small", "base")


def peak_flops(card: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16 if name.lower() in card.lower()), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """The allocator's peak on CUDA; on CPU the process's peak RSS (a rough figure)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def compile_with(module: torch.nn.Module, backend: str) -> torch.nn.Module:
    torch._dynamo.reset()  # one code object (TrainingLoss.forward) for every model: do not hit the recompile limit
    return torch.compile(module, backend=backend)


def timed_steps(step, device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per call of ``step`` after ``warmup`` calls, waiting for the device only at the ends."""
    for _ in range(warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return (time.perf_counter() - t) / iters


def count_flops(objective: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> float:
    """FLOPs of one forward + backward per image (FlopCounterMode, eager, two images)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        objective(images[:2], targets[:2]).backward()
    objective.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def optimizer_for(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=device.type == "cuda")


def step_row(name: str, *, batch: int, img_size: int, compiled: bool, device, args, peak: float | None) -> dict:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, img_size=img_size).to(device).train()
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    objective = TrainingLoss(model, torch.nn.CrossEntropyLoss(), var_weight=0.1)
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    targets = torch.randint(0, model.num_classes, (batch,), device=device)
    flops = count_flops(objective, images, targets)
    optimizer = optimizer_for(model, device)
    run = compile_with(objective, args.compile_backend) if compiled else objective
    amp = runtime.autocast(device)
    reset_peak(device)
    seconds = timed_steps(lambda: engine.optimizer_step(run, [(images, targets)], optimizer, amp=amp), device,
                          args.warmup, args.iters)
    img_s = batch / seconds
    return {"kind": "step", "model": name, "batch": batch, "img_size": img_size, "compiled": compiled,
            "img_s": img_s, "peak_mem_gib": peak_gib(device), "flops_per_img": flops,
            "mfu": img_s * flops / peak if peak else None}


def loop_data(root: Path, img_size: int, unique: int, copies: int) -> Path:
    """Generated ImageNet-layout JPEGs: ``unique`` images per class, each hard-linked ``copies`` times
    (decoding costs the same; generating is the slow part). Reused when already there."""
    from absvit.data.synthetic import generate

    done = root / f".complete-{img_size}-{unique}x{copies}"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    generate(root, seed=0, size=img_size, per_class={"train": unique, "val": 1})
    for folder in (root / "train").iterdir():
        for image in list(folder.iterdir()):
            for k in range(1, copies):
                os.link(image, folder / f"{image.stem}_{k}{image.suffix}")
    done.touch()
    return root


def loop_row(name: str, *, data: Path, batch: int, img_size: int, device, args) -> dict:
    """Two epochs of the real loop (warm-up: workers, compile; then timed), then the bare step."""
    from absvit.data.readers import label_space

    torch.manual_seed(0)
    recipe = PretrainRecipe(epochs=2, batch_size=batch, img_size=img_size, workers=args.workers, **args.loop_recipe)
    dist = DistInfo()
    classes = label_space(str(data / "train"))
    train, _ = loaders(data, classes, recipe, dist, device, prefetch=device.type == "cuda")
    model, optimizer, _, ema, mixup, criterion = build(name, len(classes), recipe, device, updates_per_epoch=len(train))
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    objective = TrainingLoss(model, criterion, recipe.var_weight)
    run = compile_with(objective, args.compile_backend) if args.compile_loop else objective
    rates = []
    for epoch in range(recipe.epochs):
        train.sampler.set_epoch(epoch)
        progress = Progress(f"Loop: [{name}]", len(train), every_s=1e9, device=device)
        with contextlib.redirect_stdout(sys.stderr):  # its progress line: a note, not the table
            engine.train_one_epoch(run, train, optimizer, device, progress=progress, finite=engine.FiniteCheck("-"),
                                   where="step {step}", mixup=mixup,
                                   on_step=None if ema is None else lambda *_: ema.update(model))
        rates.append(progress.summary()["images_per_s"])

    images, targets = next(iter(train))
    images, targets = images.to(device), targets.to(device)
    images, targets = mixup(images, targets) if mixup is not None else (images, targets)
    images = images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else images
    amp = runtime.autocast(device)
    seconds = timed_steps(lambda: engine.optimizer_step(run, [(images, targets)], optimizer, amp=amp), device,
                          args.warmup, args.iters)
    return {"kind": "loop", "model": name, "batch": batch, "img_size": img_size, "compiled": args.compile_loop,
            "img_s": rates[-1], "bare_step_img_s": batch / seconds}


def segment_row(kind: str, name: str, *, batch: int, crop: tuple[int, int], device, args) -> dict:
    from absvit.models.segmenter import Segmenter, build_backbone
    from absvit.segment import SegmentationLoss

    torch.manual_seed(0)
    with warnings.catch_warnings():  # "starts from random init": known, not news
        warnings.simplefilter("ignore", UserWarning)
        backbone = build_backbone(kind, name, drop_path=0.1)
    model = Segmenter(backbone, 150, channels=args.head_channels, aux_channels=args.head_channels // 2, dropout=0.1)
    model = model.to(device).train()
    objective = SegmentationLoss(model, aux_weight=0.4)
    optimizer = torch.optim.AdamW(model.param_groups(0.01), lr=6e-5)
    images = torch.randn(batch, 3, *crop, device=device)
    labels = torch.randint(0, 150, (batch, *crop), device=device)
    labels[:, :8] = 255  # some ignored pixels, as real labels have
    amp = runtime.autocast(device)
    reset_peak(device)
    seconds = timed_steps(lambda: engine.optimizer_step(objective, [(images, labels)], optimizer, amp=amp), device,
                          args.warmup, args.seg_iters)
    return {"kind": "segment", "model": name, "batch": batch, "crop": list(crop), "step_s": seconds,
            "peak_mem_gib": peak_gib(device)}


def eval_row(name: str, *, batch: int, img_size: int, device, args) -> dict:
    """Inference img/s through ``engine.accuracy`` itself (bf16 autocast, channels-last, counts on the device) on
    cached batches: the evaluation's model cost, without the loader."""
    model = timm.create_model(name, img_size=img_size).to(device)
    batches = [(torch.randn(batch, 3, img_size, img_size, device=device),
                torch.randint(0, model.num_classes, (batch,), device=device))] * args.iters
    quiet = dict(every_s=1e9)
    engine.accuracy(model, batches[:args.warmup], device, **quiet)  # warm-up (and cuDNN / allocator set-up)
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    engine.accuracy(model, batches, device, **quiet)
    sync(device)
    seconds = time.perf_counter() - start
    return {"kind": "eval", "model": name, "batch": batch, "img_size": img_size, "img_s": batch * args.iters / seconds,
            "peak_mem_gib": peak_gib(device)}


def _importable(module: str, note) -> bool:
    try:
        __import__(module)
    except ImportError as e:  # e.g. torchmetrics on a bare GPU image
        note(f"segment rows skipped: {module} cannot be imported here ({e})")
        return False
    return True


def table(result: dict) -> str:
    lines = [f"{result['card']}, torch {result['torch']}, {result['measured_at']}"]
    for row in result["rows"]:
        if row["kind"] == "step":
            mfu = f"{100 * row['mfu']:5.1f}% MFU" if row["mfu"] is not None else "   MFU n/a"
            lines.append(f"step     {row['model']:<28} b{row['batch']:<4} {'compiled' if row['compiled'] else 'eager   '}"
                         f" {row['img_s']:9.1f} img/s  {row['peak_mem_gib']:6.2f} GiB  "
                         f"{row['flops_per_img'] / 1e9:7.2f} GFLOP/img  {mfu}")
        elif row["kind"] == "loop":
            lines.append(f"loop     {row['model']:<28} b{row['batch']:<4} {'compiled' if row['compiled'] else 'eager   '}"
                         f" {row['img_s']:9.1f} img/s  bare step {row['bare_step_img_s']:.1f} img/s "
                         f"({100 * row['img_s'] / row['bare_step_img_s']:.0f}%)")
        elif row["kind"] == "eval":
            lines.append(f"eval     {row['model']:<28} b{row['batch']:<4} bf16 CL  {row['img_s']:9.1f} img/s  "
                         f"{row['peak_mem_gib']:6.2f} GiB")
        else:
            lines.append(f"segment  {row['model']:<28} b{row['batch']:<4} {row['crop'][0]}x{row['crop'][1]}  "
                         f"{1000 * row['step_s']:9.1f} ms/step  {row['peak_mem_gib']:6.2f} GiB")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--smoke", action="store_true", help="toy sizes (pico models, 64 px, a few steps): the code paths, not a speed")
    ap.add_argument("--only", nargs="+", choices=["step", "loop", "eval", "segment"],
                    default=["step", "loop", "eval", "segment"])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "gpu.json")
    ap.add_argument("--data", type=Path, default=None, help="where the loop's generated images go (default: a temporary folder)")
    ap.add_argument("--workers", type=int, default=min(14, max(1, (os.cpu_count() or 2) - 2)), help="loop loader workers")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: capture without codegen)")
    ap.add_argument("--no-compile", action="store_true", help="eager only (no compiled step rows, an eager loop)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.models = [("vit_pico_patch8_64", "absvit_pico_patch8_64")]
        args.step_batch, args.img_size = {"vit_pico_patch8_64": 4, "absvit_pico_patch8_64": 4}, 64
        args.loop_models, args.loop_batch = ["absvit_pico_patch8_64"], {"absvit_pico_patch8_64": 8}
        args.unique, args.copies = 2, 2
        args.segment = [("absvit", "absvit_pico_patch8_64"), ("vit", "vit_pico_patch8_64")]
        args.seg_batch, args.crop, args.head_channels = 2, (64, 64), 16
        args.warmup, args.iters = args.warmup or 1, args.iters or 2
        args.workers = min(args.workers, 1)
    else:
        args.models = [(f"vit_{s}_patch16_224", f"absvit_{s}_patch16_224") for s in SIZES]
        args.step_batch = {n: 128 if "base" in n else 256 for pair in args.models for n in pair}
        args.img_size = 224
        args.loop_models = [f"absvit_{s}_patch16_224" for s in SIZES] + ["vit_base_patch16_224"]
        args.loop_batch = {n: 128 if "base" in n else 256 for n in args.loop_models}
        args.unique, args.copies = 64, 16  # 10 classes x 1,024 images: 40 steps of 256, 80 of 128
        args.segment = [("absvit", "absvit_base_patch16_224"), ("vit", "vit_base_patch16_224")]
        args.seg_batch, args.crop, args.head_channels = 16, (512, 512), 512
        args.warmup, args.iters = args.warmup or 5, args.iters or 20
    args.seg_iters = args.iters if args.smoke else max(args.iters // 2, 1)
    args.eval_batch = 4 if args.smoke else 256
    args.compile_loop = not args.no_compile
    args.loop_recipe = dict(crop_pct=1.0, warmup_epochs=0) if args.smoke else {}  # else the paper recipe
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: the GPU rows need CUDA, and torch sees no CUDA device here; nothing measured, "
              f"nothing written to {args.out}. (`--device cpu --smoke` runs every code path at toy size.)")
        return 0
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(card) if device.type == "cuda" else None
    rows = []

    def note(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if "step" in args.only:
        for pair in args.models:
            for name in pair:
                for compiled in (False, True)[: 1 if args.no_compile else 2]:
                    note(f"step: {name} {'compiled' if compiled else 'eager'}")
                    rows.append(step_row(name, batch=args.step_batch[name], img_size=args.img_size, compiled=compiled,
                                         device=device, args=args, peak=peak))
    if "loop" in args.only:
        with tempfile.TemporaryDirectory(prefix="absvit-bench-") as tmp:
            data = loop_data(args.data or Path(tmp) / "data", args.img_size, args.unique, args.copies)
            for name in args.loop_models:
                note(f"loop: {name}")
                rows.append(loop_row(name, data=data, batch=args.loop_batch[name], img_size=args.img_size,
                                     device=device, args=args))
    if "eval" in args.only:
        for pair in args.models:
            for name in pair:
                note(f"eval: {name}")
                rows.append(eval_row(name, batch=args.eval_batch, img_size=args.img_size, device=device, args=args))
    if "segment" in args.only and _importable("absvit.segment", note):
        for kind, name in args.segment:
            note(f"segment: {name}")
            rows.append(segment_row(kind, name, batch=args.seg_batch, crop=args.crop, device=device, args=args))

    result = {"card": card, "torch": torch.__version__,
              "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    print(table(result))
    if device.type == "cuda" and peak is None:
        print(f"MFU omitted: no peak bf16 FLOP/s known for {card!r} (benchmarks/gpu.py PEAK_BF16)")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
