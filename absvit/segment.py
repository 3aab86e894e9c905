"""Segmentation fine-tuning and evaluation (``absvit segment``): UperNet on VOC, Cityscapes, ADE20K.

Output folder: ``checkpoint.pth`` (model, optimizer, scheduler, iteration, RNG; rewritten
atomically every ``checkpoint_every`` iterations and at the end), ``metrics.jsonl`` (loss and
lr every few iterations) and ``result.json`` (mIoU, pixel accuracy and every class's IoU on
the val split, single-scale whole images). A restarted job resumes from the checkpoint only if
it belongs to the same run (backbone, weights, dataset, recipe, world size), and ends exactly
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

from absvit import engine
from absvit.checkpoint import agree, read_checkpoint, recorded_setup
from absvit.data.segmentation import (
    DATASETS,
    IGNORE,
    IterationSampler,
    SegmentationFolder,
    TestTransform,
    TrainTransform,
    class_names,
)
from absvit.engine import LOG_EVERY_S
from absvit.errors import UsageError
from absvit.io import write_json
from absvit.models import require_model
from absvit.models.segmenter import Segmenter, build_backbone
from absvit.models.weights import check_state_dict
from absvit.recipe import SegmentRecipe
from absvit.tracking import Tracker, run_tags
from absvit.training import checkpoint_to_resume, restore_rng, rng_states, truncate_log

NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as in MMSegmentation's ViT configs: no weight decay on norm layers nor on what the
    backbone's own ``no_weight_decay()`` names (timm's ViT: pos_embed, cls_token; AbSViT adds prompt)."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)}
    for prefix, m in model.named_modules():
        if callable(getattr(m, "no_weight_decay", None)):
            no_decay |= {id(p) for name, p in m.named_parameters() if name in m.no_weight_decay()}
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in no_decay]
    plain = [p for p in model.parameters() if p.requires_grad and id(p) in no_decay]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def iou_from_confusion(cm: torch.Tensor) -> dict:
    """Per-class IoU (NaN for classes absent from both prediction and truth), mIoU over the rest, pixel accuracy."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    return {"iou": iou.tolist(), "miou": 100 * float(iou.nanmean()), "aacc": 100 * float(tp.sum() / cm.sum().clamp(min=1))}


@torch.no_grad()
def evaluate_segmenter(model: Segmenter, dataset: SegmentationFolder, device, every_s: float = LOG_EVERY_S) -> dict:
    model.eval()
    num_classes = dataset.spec.num_classes
    # rank 0 alone evaluates the whole val split: no sync with the other processes
    confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE, sync_on_compute=False).to(device)
    progress = engine.Progress("Test:", len(dataset), every_s=every_s, device=device)
    cuda = torch.device(device).type == "cuda"
    if cuda:  # the head's convolutions in channels-last (after training: the training step is unchanged)
        model.to(memory_format=torch.channels_last)
    for data, (image, label) in engine.timed(dataset[i] for i in range(len(dataset))):
        image = image[None].to(device, non_blocking=True)
        if cuda:
            image = image.contiguous(memory_format=torch.channels_last)
        with engine.autocast(device):  # as training runs: bf16 on CUDA
            logits = model.predict(image, label.shape[-2:])
        confusion.update(logits.float().argmax(1), label[None].to(device, non_blocking=True))
        progress.step(images=1, data=data)
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

    ``model_name`` defaults to the model the backbone checkpoint records; ``fresh_on_change``: a
    checkpoint of a different run in ``out_dir`` is moved aside instead of refused."""
    model_name, source = _backbone_source(checkpoint, model_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dist, device = engine.setup(recipe.seed)

    crop, scale = (recipe.crop_height, recipe.crop_width), (recipe.scale_long, recipe.scale_short)
    train_set = SegmentationFolder(dataset, data_root, "train",
                                   TrainTransform(crop, scale, (recipe.ratio_min, recipe.ratio_max), recipe.cat_max_ratio))
    val_set = SegmentationFolder(dataset, data_root, "val", TestTransform(scale))

    model = Segmenter(build_backbone(backbone, model_name, checkpoint=checkpoint, ema=ema, drop_path=recipe.drop_path),
                      DATASETS[dataset].num_classes, channels=recipe.head_channels, aux_channels=recipe.aux_channels,
                      dropout=recipe.dropout).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr,
                                  betas=(recipe.beta1, recipe.beta2))
    scheduler = PolyLRScheduler(optimizer, t_initial=recipe.iterations, power=recipe.power, lr_min=recipe.min_lr,
                                warmup_t=recipe.warmup_iters, warmup_lr_init=recipe.lr * recipe.warmup_ratio,
                                t_in_epochs=False)

    ckpt_path, log_path = out / "checkpoint.pth", out / "metrics.jsonl"
    identity = {"backbone": backbone, "model": model_name, "dataset": dataset, "data_root": str(Path(data_root).resolve()),
                "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None, "ema": ema,
                "recipe": recipe.identity(), "world_size": dist.world_size}
    described = {"arch": model_name, "img_size": crop, "classes": class_names(dataset), "run": identity}
    start, run_id = 0, None
    ckpt = checkpoint_to_resume(out, identity, fresh_on_change=fresh_on_change)
    if ckpt is not None:
        start, run_id = _resume(ckpt, ckpt_path, model, optimizer, dist.rank)
        truncate_log(log_path, "iteration", start)
        print(f"resuming {backbone} ({model_name}) on {dataset} from {ckpt_path} at iteration {start}", flush=True)
    if dist.enabled and device.type == "cuda":  # torch's SyncBatchNorm is GPU-only; CPU processes keep their own BN statistics
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    objective = engine.distributed(SegmentationLoss(model, recipe.aux_weight), dist, device)
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
    tracker = Tracker(run_name or f"segment/{backbone}/{dataset}", uri=tracking_uri, run_id=run_id, params=params,
                      tags=tags, enabled=track and dist.is_main)
    log_every = max(1, min(50, recipe.iterations // 20))  # metrics.jsonl rows
    progress = engine.Progress(f"Fine-tune: [{backbone}/{dataset}]", recipe.iterations, start=start, every_s=log_every_s,
                               dist=dist, device=device)
    with engine.tracked(tracker):
        objective.train()
        for data, (images, labels) in engine.timed(loader):
            it = progress.done
            scheduler.step_update(it)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = engine.train_step(objective, images, labels, optimizer, amp=engine.autocast(device),
                                     where=f"iteration {it + 1}", ckpt_path=ckpt_path)
            lr = optimizer.param_groups[0]["lr"]
            progress.step(images=images.shape[0], data=data, loss=loss, lr=lr)
            done = progress.done
            if dist.is_main and (done % log_every == 0 or done == recipe.iterations):
                engine.append_row(log_path, {"iteration": done, "loss": loss, "lr": lr, "seconds": time.perf_counter() - progress.t0})
                tracker.log_metrics({"loss": loss, "lr": lr}, step=done)
            if done % recipe.checkpoint_every == 0 or done == recipe.iterations:
                rng = rng_states(dist)
                if dist.is_main:
                    kept = max(start, (done - 1) // recipe.checkpoint_every * recipe.checkpoint_every)  # the one on disk
                    with engine.resumable(ckpt_path, f"iteration {kept}" if kept else None):
                        engine.save_state(ckpt_path, model, described, tracker.run_id, optimizer=optimizer.state_dict(),
                                          iteration=done, rng=rng)
            if stop_after is not None and done >= stop_after and done < recipe.iterations:
                tracker.finish("KILLED")
                return {"iteration": done}
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
            for path in (out / "result.json", log_path):
                tracker.log_artifact(path)
    return result


def _resume(ckpt: dict, path: Path, model: Segmenter, optimizer, rank: int) -> tuple[int, str | None]:
    check_state_dict(model, ckpt["model"], path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    restore_rng(ckpt["rng"], rank)
    return int(ckpt["iteration"]), ckpt.get("mlflow_run_id")
