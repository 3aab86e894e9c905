"""Segmentation fine-tuning and evaluation (``absvit segment``): UperNet on VOC, Cityscapes, ADE20K.

Output folder: ``checkpoint.pth`` (model, optimizer, scheduler, iteration, RNG; rewritten
atomically every ``checkpoint_every`` iterations and at the end), ``metrics.jsonl`` (loss and
lr every few iterations) and ``result.json`` (mIoU, pixel accuracy and every class's IoU on
the val split, single-scale whole images). A restarted job resumes from the checkpoint only if
it belongs to the same run (backbone, weights, dataset, recipe, world size), and ends exactly
as an uninterrupted one (the data stream is a function of the iteration).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.scheduler import PolyLRScheduler
from torchmetrics.classification import MulticlassConfusionMatrix
from tqdm import tqdm

from absvit.checkpoint import agree, check_state_dict, read_checkpoint, recorded_setup
from absvit.data.segmentation import (
    DATASETS,
    IGNORE,
    IterationSampler,
    SegmentationFolder,
    TestTransform,
    TrainTransform,
    class_names,
)
from absvit.distributed import init_distributed
from absvit.errors import UsageError
from absvit.io import atomic_path, write_json
from absvit.models.segmenter import Segmenter, build_backbone
from absvit.recipe import SegmentRecipe
from absvit.models import require_model
from absvit.tracking import Tracker, run_tags
from absvit.training import NonFiniteLoss, checkpoint_to_resume, rng_state, set_rng_state, truncate_log

NO_DECAY_NAMES = ("pos_embed", "cls_token", "prompt")
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on pos_embed, cls_token, the prior prompt and norm layers."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)}
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if id(p) in no_decay or name.split(".")[-1] in NO_DECAY_NAMES else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def iou_from_confusion(cm: torch.Tensor) -> dict:
    """Per-class IoU (NaN for classes absent from both prediction and truth), mIoU over the rest, pixel accuracy."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    return {"iou": iou.tolist(), "miou": 100 * float(iou.nanmean()), "aacc": 100 * float(tp.sum() / cm.sum().clamp(min=1))}


@torch.no_grad()
def evaluate_segmenter(model: Segmenter, dataset: SegmentationFolder, device) -> dict:
    model.eval()
    num_classes = dataset.spec.num_classes
    confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE).to(device)
    for i in tqdm(range(len(dataset)), desc="evaluate", disable=None, leave=False):
        image, label = dataset[i]
        logits = model.predict(image[None].to(device), label.shape[-2:])
        confusion.update(logits.argmax(1), label[None].to(device))
    scores = iou_from_confusion(confusion.compute().cpu())
    names = class_names(dataset.dataset)
    scores["iou"] = {n: (None if math.isnan(v) else 100 * v) for n, v in zip(names, scores["iou"])}
    return scores


def _loss(logits, aux, labels, aux_weight: float) -> torch.Tensor:
    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
    return loss + aux_weight * F.cross_entropy(aux.float(), labels, ignore_index=IGNORE) if aux is not None else loss


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
            stop_after: int | None = None, fresh_on_change: bool = False) -> dict:
    """Fine-tune ``backbone`` (kind) / ``model_name`` with UperNet on ``dataset`` and evaluate on its val split.

    ``model_name`` defaults to the model the backbone checkpoint records; ``fresh_on_change``: a
    checkpoint of a different run in ``out_dir`` is moved aside instead of refused."""
    model_name, source = _backbone_source(checkpoint, model_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dist = init_distributed()
    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(recipe.seed + dist.rank)

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
        start, run_id = _resume(ckpt, ckpt_path, model, optimizer)
        truncate_log(log_path, "iteration", start)
        print(f"resuming {backbone} ({model_name}) on {dataset} from {ckpt_path} at iteration {start}", flush=True)
    objective = model
    if dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        objective = nn.parallel.DistributedDataParallel(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
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
    tags = run_tags("segment", preset, run or out.parent.name, backbone=backbone, dataset=dataset, source_run_id=source)
    tracker = Tracker(run_name or f"segment/{backbone}/{dataset}", uri=tracking_uri, run_id=run_id, params=params,
                      tags=tags, enabled=track and dist.is_main)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    log_every = max(1, min(50, recipe.iterations // 20))
    try:
        objective.train()
        t0 = time.time()
        for it, (images, labels) in enumerate(tqdm(loader, desc=f"{backbone}/{dataset}", disable=None if dist.is_main else True,
                                                   initial=start, total=recipe.iterations, leave=False), start=start):
            scheduler.step_update(it)
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast:
                loss = _loss(*objective(images), labels, recipe.aux_weight)
            if not math.isfinite(loss.item()):
                raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at iteration {it + 1}; stopping. "
                                    f"The last good checkpoint is kept at {ckpt_path}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done = it + 1
            if dist.is_main and (done % log_every == 0 or done == recipe.iterations):
                row = {"iteration": done, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"],
                       "seconds": time.time() - t0}
                with open(log_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                tracker.log_metrics({"loss": row["loss"], "lr": row["lr"]}, step=done)
            if dist.is_main and (done % recipe.checkpoint_every == 0 or done == recipe.iterations):
                _save(ckpt_path, model, optimizer, done, described, tracker.run_id)
            if stop_after is not None and done >= stop_after and done < recipe.iterations:
                tracker.finish("KILLED")
                return {"iteration": done}

        result = {"backbone": backbone, "model": model_name, "dataset": dataset, "iterations": recipe.iterations,
                  "checkpoint": str(checkpoint), "val_images": len(val_set)}
        if dist.is_main:
            result.update(evaluate_segmenter(model, val_set, device))
            write_json(out / "result.json", result)
            tracker.log_metrics({"miou": result["miou"], "aacc": result["aacc"]})
            for path in (out / "result.json", log_path):
                tracker.log_artifact(path)
        tracker.finish()
        return result
    except (SystemExit, KeyboardInterrupt):
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise


def _save(path: Path, model: Segmenter, optimizer, iteration: int, described: dict, run_id) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
             "args": described["run"]["recipe"], **described, "rng": rng_state(), "mlflow_run_id": run_id}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _resume(ckpt: dict, path: Path, model: Segmenter, optimizer) -> tuple[int, str | None]:
    check_state_dict(model, ckpt["model"], path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["iteration"]), ckpt.get("mlflow_run_id")
