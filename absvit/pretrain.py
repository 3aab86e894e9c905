"""ImageNet pretraining (``absvit pretrain``) with timm's own recipe pieces.

Output folder: ``checkpoint.pth`` (official layout plus resume state, rewritten atomically
after every epoch), ``metrics.jsonl`` (one line per epoch), and when the run is complete
``model.pth`` (the final weights, official layout) and ``result.json`` (final metrics). Both
``.pth`` files describe themselves: model name (``arch``), ``img_size``, ``classes``, and the
run's identity (model, recipe, data root, classes, world size). A restarted job resumes from
``checkpoint.pth`` only if it belongs to the same run, and ends exactly where an
uninterrupted run would.
"""
from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import timm
import torch
from timm.data import Mixup, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from tqdm import tqdm

import absvit.models  # noqa: F401  (registers the models)
from absvit.checkpoint import extract_state_dict
from absvit.data.readers import ClassFolder, label_space
from absvit.distributed import DistInfo, init_distributed
from absvit.errors import UsageError
from absvit.io import atomic_path, write_json
from absvit.models import require_model
from absvit.recipe import PretrainRecipe
from absvit.tracking import Tracker, run_tags
from absvit.training import NonFiniteLoss, checkpoint_to_resume, rng_state, set_rng_state, truncate_log


class TrainingLoss(torch.nn.Module):
    """The training objective as a module, so that DDP wraps (and syncs) the whole step.

    AbSViT: mean of both passes' supervised loss + var_weight * L_var; a plain ViT: one pass.
    """

    def __init__(self, model, criterion, var_weight: float):
        super().__init__()
        self.model, self.criterion, self.var_weight = model, criterion, var_weight

    def forward(self, images, targets):
        if hasattr(self.model, "forward_train"):
            out = self.model.forward_train(images)
            passes = (self.criterion(out.logits_bottom_up, targets) + self.criterion(out.logits, targets)) / 2
            return passes + self.var_weight * out.var_loss
        return self.criterion(self.model(images), targets)


@torch.inference_mode()
def top1(model, loader, device) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(images.to(device))
        correct += (logits.argmax(-1).cpu() == labels).sum().item()
        total += labels.numel()
    return 100.0 * correct / max(total, 1)


def pretrain(model_name: str, data_root, out_dir, recipe: PretrainRecipe, *, tracking_uri: str | None = None,
             track: bool = True, stop_after_epoch: int | None = None, run_name: str | None = None,
             fresh_on_change: bool = False, preset: str | None = None, run: str | None = None) -> dict:
    """Train ``model_name`` on ``<data_root>/train``, validate on ``<data_root>/val``.

    ``fresh_on_change``: a checkpoint of a different run in ``out_dir`` is moved aside instead of refused.
    """
    require_model(model_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dist = init_distributed()
    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(recipe.seed + dist.rank)
    np.random.seed(recipe.seed + dist.rank)
    random.seed(recipe.seed + dist.rank)

    data_root = Path(data_root)
    classes = label_space(str(data_root / "train"))
    train_set, val_set = _datasets(data_root, classes, recipe)
    train_loader, val_loader, sampler = _loaders(train_set, val_set, recipe, dist)

    model = timm.create_model(model_name, num_classes=len(classes), img_size=recipe.img_size,
                              drop_path_rate=recipe.drop_path).to(device)
    optimizer = create_optimizer_v2(model, recipe.opt, lr=recipe.scaled_lr, weight_decay=recipe.weight_decay)
    scheduler, _ = create_scheduler_v2(optimizer, recipe.sched, num_epochs=recipe.epochs, min_lr=recipe.min_lr,
                                       warmup_lr=recipe.warmup_lr, warmup_epochs=recipe.warmup_epochs)
    ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.model_ema else None
    mixup = (Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, label_smoothing=recipe.smoothing,
                   num_classes=len(classes)) if recipe.mixup > 0 or recipe.cutmix > 0 else None)
    criterion = SoftTargetCrossEntropy() if mixup else LabelSmoothingCrossEntropy(recipe.smoothing)

    ckpt_path, log_path = out / "checkpoint.pth", out / "metrics.jsonl"
    identity = {"model": model_name, "recipe": recipe.identity(), "data_root": str(data_root.resolve()),
                "classes": list(classes), "world_size": dist.world_size}
    described = {"arch": model_name, "img_size": recipe.img_size, "classes": list(classes), "run": identity}
    start_epoch, run_id = 0, None
    ckpt = checkpoint_to_resume(out, identity, fresh_on_change=fresh_on_change)
    if ckpt is not None:
        start_epoch, run_id = _resume(ckpt, ckpt_path, model, ema, optimizer, scheduler)
        truncate_log(log_path, "epoch", start_epoch)
        print(f"resuming {model_name} from {ckpt_path} at epoch {start_epoch}", flush=True)
    else:
        scheduler.step(0)
    objective = TrainingLoss(model, criterion, recipe.var_weight)
    if dist.enabled:
        objective = torch.nn.parallel.DistributedDataParallel(objective, device_ids=[dist.local_rank] if device.type == "cuda" else None)

    params = {"model": model_name, "data_root": str(data_root), "num_classes": len(classes),
              "world_size": dist.world_size, "recipe": recipe.to_dict()}
    tracker = Tracker(run_name or f"pretrain/{model_name}", uri=tracking_uri, run_id=run_id, params=params,
                      tags=run_tags("pretrain", preset, run or out.name, seed=recipe.seed),
                      enabled=track and dist.is_main)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    metrics: dict = _last_row(log_path) if start_epoch >= recipe.epochs else {}  # resuming a finished run
    try:
        for epoch in range(start_epoch, recipe.epochs):
            if sampler is not None and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            t0 = time.time()
            train_loss = _train_epoch(objective, model, train_loader, mixup, optimizer, ema, recipe,
                                      device, autocast, epoch, ckpt_path, dist)
            scheduler.step(epoch + 1)
            metrics = {"epoch": epoch + 1, "train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"],
                       "val_top1": top1(model, val_loader, device), "epoch_seconds": time.time() - t0}
            if ema is not None:
                metrics["val_top1_ema"] = top1(ema.module, val_loader, device)
            if dist.is_main:
                _save(ckpt_path, model, ema, described, tracker.run_id, optimizer=optimizer.state_dict(),
                      lr_scheduler=scheduler.state_dict(), epoch=epoch + 1, rng=rng_state())
                with open(log_path, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < recipe.epochs:
                tracker.finish("KILLED")
                return metrics
        result = {"model": model_name, "classes": len(classes), "epochs": recipe.epochs, **metrics}
        if dist.is_main:
            _save(out / "model.pth", model, ema, described, tracker.run_id, epoch=recipe.epochs)
            write_json(out / "result.json", result)
            for path in (out / "result.json", log_path):
                tracker.log_artifact(path)
        tracker.finish()
        return result
    except (SystemExit, KeyboardInterrupt):  # preempted or timed out: the requeued job continues this run
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise


def _datasets(root: Path, classes, recipe: PretrainRecipe):
    train_tf = create_transform(recipe.img_size, is_training=True, color_jitter=recipe.color_jitter,
                                auto_augment=recipe.auto_augment or None, interpolation=recipe.interpolation,
                                re_prob=recipe.reprob, re_mode="pixel", re_count=1)
    eval_tf = create_transform(recipe.img_size, is_training=False, interpolation=recipe.interpolation,
                               crop_pct=recipe.crop_pct)
    return ClassFolder(root / "train", classes, train_tf), ClassFolder(root / "val", classes, eval_tf)


def _loaders(train_set, val_set, recipe: PretrainRecipe, dist: DistInfo):
    per_process = recipe.batch_size // dist.world_size
    if recipe.repeated_aug:
        sampler = RepeatAugSampler(train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True)
    elif dist.enabled:
        sampler = torch.utils.data.DistributedSampler(train_set, dist.world_size, dist.rank, shuffle=True, seed=recipe.seed)
    else:
        sampler = None
    common = dict(num_workers=recipe.workers, pin_memory=torch.cuda.is_available(), persistent_workers=False)
    train = torch.utils.data.DataLoader(train_set, batch_size=per_process, sampler=sampler, shuffle=sampler is None,
                                        drop_last=True, **common)
    val = torch.utils.data.DataLoader(val_set, batch_size=per_process, shuffle=False, **common)
    if len(train) == 0:
        raise UsageError(f"recipe key batch_size: {recipe.batch_size} ({per_process} per process) is larger than the "
                         f"training set {train_set.root} ({len(train_set)} images); lower batch_size")
    return train, val, sampler


def _train_epoch(objective, model, loader, mixup, optimizer, ema, recipe, device, autocast, epoch, ckpt_path, dist):
    objective.train()
    total, steps = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=None if dist.is_main else True, leave=False)
    for images, targets in bar:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = objective(images, targets)
        if not math.isfinite(loss.item()):
            raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {steps + 1}; "
                                f"stopping. The last good checkpoint is kept at {ckpt_path}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        total += loss.item()
        steps += 1
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return total / max(steps, 1)


def _save(path, model, ema, described: dict, run_id, **state) -> None:
    """A self-describing file in the official layout (``model``, ``model_ema``, ``args``, ``epoch``, ...)."""
    state = {"model": model.state_dict(), "args": described["run"]["recipe"], **described,
             "mlflow_run_id": run_id, **state}
    if ema is not None:
        state["model_ema"] = ema.module.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _last_row(log_path: Path) -> dict:
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def _resume(ckpt: dict, path, model, ema, optimizer, scheduler) -> tuple[int, str | None]:
    model.load_state_dict(extract_state_dict(ckpt, path))
    if ema is not None:
        ema.module.load_state_dict(extract_state_dict(ckpt, path, ema=True))
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["lr_scheduler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), ckpt.get("mlflow_run_id")
