"""Segmentation fine-tuning and evaluation (``absvit segment``): UperNet on VOC, Cityscapes, ADE20K.

Output folder: ``checkpoint.pth`` (model, optimizer, scheduler, iteration, RNG; rewritten
atomically every ``checkpoint_every`` iterations and at the end), ``metrics.jsonl`` (loss and
lr every few iterations) and ``result.json`` (mIoU, pixel accuracy and every class's IoU on
the val split, single-scale whole images). A restarted job resumes from the checkpoint only if
it belongs to the same run (backbone, dataset, recipe, world size, and the backbone file and the dataset folder by
content: ``absvit.digests``), and ends exactly
as an uninterrupted one (the data stream is a function of the iteration).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.scheduler import PolyLRScheduler
from torchmetrics.classification import MulticlassConfusionMatrix

from absvit import engine, runtime
from absvit.checkpoint import (agree, checkpoint_to_resume, read_checkpoint, recorded_setup, resumable, resume,
                               rng_states, save_state, truncate_log)
from absvit.data.sampling import IterationSampler
from absvit.digests import digest
from absvit.data.segmentation import DATASETS, IGNORE, SegmentationFolder, TestTransform, TrainTransform, class_names
from absvit.errors import UsageError
from absvit.io import append_jsonl, write_json
from absvit.models import require_model
from absvit.models.segmenter import Segmenter, build_backbone
from absvit.progress import LOG_EVERY_S, Progress
from absvit.recipe import SegmentRecipe
from absvit.tracking import Tracker, run_tags

def iou_from_confusion(cm: torch.Tensor) -> dict:
    """Per-class IoU (NaN for classes absent from both prediction and truth), mIoU over the rest, pixel accuracy."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    return {"iou": iou.tolist(), "miou": 100 * float(iou.nanmean()), "aacc": 100 * float(tp.sum() / cm.sum().clamp(min=1))}


def evaluate_segmenter(model: Segmenter, dataset: SegmentationFolder, device, every_s: float = LOG_EVERY_S) -> dict:
    """mIoU, pixel accuracy and each class's IoU over ``dataset``: single-scale whole images (``Segmenter.predict``),
    one at a time (their sizes differ), as training runs (bf16 autocast on CUDA). Rank 0 alone evaluates the
    whole val split: no sync with the other processes."""
    confusion = MulticlassConfusionMatrix(dataset.spec.num_classes, ignore_index=IGNORE, sync_on_compute=False).to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1)
    engine.evaluate(model, loader, device, confusion, progress=Progress("Test:", len(dataset), every_s=every_s, device=device),
                    forward=lambda m, image, label: m.predict(image, label.shape[-2:]).float().argmax(1))
    scores = iou_from_confusion(confusion.compute().cpu())
    names = class_names(dataset.dataset)
    scores["iou"] = {n: (None if math.isnan(v) else 100 * v) for n, v in zip(names, scores["iou"])}
    return scores


class SegmentationLoss(nn.Module):
    """Cross-entropy of the decode head plus ``aux_weight`` times the auxiliary head's, as one module for DDP."""

    def __init__(self, model: Segmenter, aux_weight: float):
        super().__init__()
        self.model, self.aux_weight = model, aux_weight

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, aux = self.model(images)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
        return loss + self.aux_weight * F.cross_entropy(aux.float(), labels, ignore_index=IGNORE) if aux is not None else loss


def _backbone_source(checkpoint, model_name: str | None) -> tuple[str, str | None]:
    """The backbone's model name (``--model``, else what its checkpoint records) and the MLflow run that wrote it."""
    recorded, source = None, None
    if checkpoint and Path(checkpoint).suffix != ".safetensors":
        ckpt = read_checkpoint(checkpoint)
        recorded, source = recorded_setup(ckpt)["model"], ckpt.get("mlflow_run_id")
        recorded = recorded if recorded and timm.is_model(recorded) else None
    model_name = agree("--model", model_name, recorded, checkpoint)
    if model_name is None:
        raise UsageError("give --model: no backbone checkpoint records one")
    return require_model(model_name), source


def segment(backbone: str, model_name: str | None, dataset: str, data_root, out_dir, recipe: SegmentRecipe, *,
            checkpoint=None, ema: bool = False, tracking_uri: str | None = None, track: bool = True,
            run_name: str | None = None, preset: str | None = None, run: str | None = None,
            stop_after: int | None = None, fresh_on_change: bool = False, log_every_s: float = LOG_EVERY_S) -> dict:
    """Fine-tune ``backbone`` (kind) / ``model_name`` with UperNet on ``dataset`` and evaluate on its val split.

    ``model_name`` defaults to the model the backbone checkpoint records; ``fresh_on_change``: a checkpoint of a
    different run in ``out_dir`` is moved aside instead of refused; ``stop_after``: end (as a killed job would)
    after that iteration.

    Longer than most functions here on purpose: set-up, resume, fine-tuning (``fine_tune``) and evaluation
    (``evaluate_segmenter``) read top to bottom."""
    model_name, source = _backbone_source(checkpoint, model_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dist, device = runtime.setup(recipe.seed)

    train_set, val_set = datasets(dataset, data_root, recipe)
    model, optimizer, scheduler = build(backbone, model_name, dataset, recipe, device, checkpoint=checkpoint, ema=ema)
    identity = {"backbone": backbone, "model": model_name, "dataset": dataset, "ema": ema,
                "inputs": {"data": digest(data_root), "checkpoint": digest(checkpoint)},
                "recipe": recipe.identity(), "world_size": dist.world_size}
    described = {"arch": model_name, "img_size": (recipe.crop_height, recipe.crop_width), "classes": class_names(dataset),
                 "run": identity}
    start, run_id = 0, None
    ckpt = checkpoint_to_resume(out, identity, fresh_on_change=fresh_on_change)
    if ckpt is not None:
        start, run_id = resume(ckpt, out / "checkpoint.pth", model=model, optimizer=optimizer, rank=dist.rank,
                               counter="iteration")
        truncate_log(out / "metrics.jsonl", "iteration", start)
        print(f"resuming {backbone} ({model_name}) on {dataset} from {out / 'checkpoint.pth'} at iteration {start}", flush=True)
    if dist.enabled and device.type == "cuda":  # torch's SyncBatchNorm is GPU-only; CPU processes keep their own BN statistics
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    sampler = IterationSampler(len(train_set), recipe.batch_size, recipe.iterations, start=start, seed=recipe.seed,
                               rank=dist.rank, world=dist.world_size)
    loader = torch.utils.data.DataLoader(train_set, batch_size=recipe.batch_size // dist.world_size, sampler=sampler,
                                         num_workers=recipe.workers, pin_memory=device.type == "cuda",
                                         # its own generator: making the iterator must not draw from the global
                                         # RNG, or a resumed run's dropout would drift from the uninterrupted one's
                                         generator=torch.Generator().manual_seed(recipe.seed))

    params = {"backbone": backbone, "model": model_name, "dataset": dataset, "data_root": str(data_root),
              "checkpoint": str(checkpoint), "ema": ema, "world_size": dist.world_size, "recipe": recipe.to_dict(),
              "source_run_id": source}
    tags = run_tags("segment", preset, run or out.parent.name, backbone=backbone, dataset=dataset, seed=recipe.seed,
                    source_run_id=source)
    with Tracker(run_name or f"segment/{backbone}/{dataset}", uri=tracking_uri, run_id=run_id, params=params,
                 tags=tags, enabled=track and dist.is_main) as tracker:
        progress = Progress(f"Fine-tune: [{backbone}/{dataset}]", recipe.iterations, start=start, every_s=log_every_s,
                            dist=dist, device=device)
        stopped = fine_tune(model, loader, optimizer, scheduler, recipe, device, dist=dist, progress=progress, out=out,
                            described=described, tracker=tracker, stop_after=stop_after)
        if stopped:
            tracker.finish("KILLED")
            return {"iteration": progress.done}
        if progress.done > start:
            train = progress.summary()
            tracker.log_metrics({"images_per_s": train["images_per_s"], "data_wait": train["data_wait"]})
        result = {"backbone": backbone, "model": model_name, "dataset": dataset, "iterations": recipe.iterations,
                  "seed": recipe.seed, "checkpoint": str(checkpoint), "val_images": len(val_set)}
        if dist.is_main:
            result.update(evaluate_segmenter(model, val_set, device, every_s=log_every_s))
            write_json(out / "result.json", result)
            tracker.log_metrics({"miou": result["miou"], "aacc": result["aacc"]})
            print(f"{progress.header} done: mIoU {result['miou']:.2f}, pixel accuracy {result['aacc']:.2f} "
                  f"on {len(val_set)} val images", flush=True)
            for path in (out / "result.json", out / "metrics.jsonl"):
                tracker.log_artifact(path)
    return result


def datasets(dataset: str, data_root, recipe: SegmentRecipe) -> tuple[SegmentationFolder, SegmentationFolder]:
    """The train split with MMSegmentation's training pipeline (random rescale, crop, flip, photometric
    distortion) and the val split at the test scale."""
    crop, scale = (recipe.crop_height, recipe.crop_width), (recipe.scale_long, recipe.scale_short)
    train = TrainTransform(crop, scale, (recipe.ratio_min, recipe.ratio_max), recipe.cat_max_ratio)
    return (SegmentationFolder(dataset, data_root, "train", train),
            SegmentationFolder(dataset, data_root, "val", TestTransform(scale)))


def build(backbone: str, model_name: str, dataset: str, recipe: SegmentRecipe, device, *, checkpoint=None,
          ema: bool = False):
    """UperNet (+ FCN auxiliary head) on the backbone, AdamW and the poly schedule with linear warm-up."""
    model = Segmenter(build_backbone(backbone, model_name, checkpoint=checkpoint, ema=ema, drop_path=recipe.drop_path),
                      DATASETS[dataset].num_classes, channels=recipe.head_channels, aux_channels=recipe.aux_channels,
                      dropout=recipe.dropout).to(device)
    optimizer = torch.optim.AdamW(model.param_groups(recipe.weight_decay), lr=recipe.lr,
                                  betas=(recipe.beta1, recipe.beta2))
    scheduler = PolyLRScheduler(optimizer, t_initial=recipe.iterations, power=recipe.power, lr_min=recipe.min_lr,
                                warmup_t=recipe.warmup_iters, warmup_lr_init=recipe.lr * recipe.warmup_ratio,
                                t_in_epochs=False)
    return model, optimizer, scheduler


def fine_tune(model: Segmenter, loader, optimizer, scheduler, recipe: SegmentRecipe, device, *, dist, progress: Progress,
              out: Path, described: dict, tracker: Tracker, stop_after: int | None) -> bool:
    """The iterations ``[progress.done, recipe.iterations)``: ``engine.train_one_epoch`` over the iteration sampler,
    with a metrics row every few iterations and a checkpoint every ``checkpoint_every`` and at the end. Returns
    True when it stopped at ``stop_after`` before the end."""
    ckpt_path, start = out / "checkpoint.pth", progress.done
    log_every = max(1, min(50, recipe.iterations // 20))  # metrics.jsonl rows
    finite = engine.FiniteCheck(ckpt_path, dist=dist)
    objective = runtime.distributed(SegmentationLoss(model, recipe.aux_weight), dist, device)
    stopped = False

    def on_step(step: int, loss: torch.Tensor, lr: float) -> bool:
        nonlocal stopped
        scheduler.step_update(step)
        if dist.is_main and (step % log_every == 0 or step == recipe.iterations):
            row = {"iteration": step, "loss": float(loss), "lr": lr, "seconds": time.perf_counter() - progress.t0}
            append_jsonl(out / "metrics.jsonl", row)
            tracker.log_metrics({"loss": row["loss"], "lr": lr}, step=step)
        if step % recipe.checkpoint_every == 0 or step == recipe.iterations:
            finite.check()  # never checkpoint spoilt weights
            rng = rng_states(dist)
            if dist.is_main:
                kept = max(start, (step - 1) // recipe.checkpoint_every * recipe.checkpoint_every)  # the one on disk
                with resumable(ckpt_path, f"iteration {kept}" if kept else None):
                    save_state(ckpt_path, model, described, tracker.run_id, optimizer=optimizer.state_dict(),
                               iteration=step, rng=rng)
        stopped = stop_after is not None and stop_after <= step < recipe.iterations
        return stopped

    scheduler.step_update(start)
    engine.train_one_epoch(objective, loader, optimizer, device, progress=progress, finite=finite,
                           where="iteration {step}", on_step=on_step)
    return stopped
