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
import time
from pathlib import Path

import timm
import torch
from timm.data import Mixup, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from absvit import engine
from absvit.checkpoint import extract_state_dict
from absvit.data.readers import ClassFolder, label_space
from absvit.distributed import DistInfo
from absvit.engine import LOG_EVERY_S
from absvit.errors import UsageError
from absvit.io import write_json
from absvit.models import require_model
from absvit.recipe import PretrainRecipe
from absvit.tracking import Tracker, run_tags
from absvit.training import NonFiniteLoss, checkpoint_to_resume, restore_rng, rng_states, truncate_log  # noqa: F401


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


def pretrain(model_name: str, data_root, out_dir, recipe: PretrainRecipe, *, tracking_uri: str | None = None,
             track: bool = True, stop_after_epoch: int | None = None, run_name: str | None = None,
             fresh_on_change: bool = False, preset: str | None = None, run: str | None = None,
             log_every_s: float = LOG_EVERY_S) -> dict:
    """Train ``model_name`` on ``<data_root>/train``, validate on ``<data_root>/val``.

    ``fresh_on_change``: a checkpoint of a different run in ``out_dir`` is moved aside instead of refused.
    """
    require_model(model_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dist, device = engine.setup(recipe.seed)

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
        start_epoch, run_id = _resume(ckpt, ckpt_path, model, ema, optimizer, scheduler, dist.rank)
        truncate_log(log_path, "epoch", start_epoch)
        print(f"resuming {model_name} from {ckpt_path} at epoch {start_epoch}", flush=True)
    else:
        scheduler.step(0)
    objective = engine.distributed(TrainingLoss(model, criterion, recipe.var_weight), dist, device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    params = {"model": model_name, "data_root": str(data_root), "num_classes": len(classes),
              "world_size": dist.world_size, "recipe": recipe.to_dict()}
    tracker = Tracker(run_name or f"pretrain/{model_name}", uri=tracking_uri, run_id=run_id, params=params,
                      tags=run_tags("pretrain", preset, run or out.name, seed=recipe.seed),
                      enabled=track and dist.is_main)
    metrics: dict = _last_row(log_path) if start_epoch >= recipe.epochs else {}  # resuming a finished run
    with engine.tracked(tracker):
        for epoch in range(start_epoch, recipe.epochs):
            if sampler is not None and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            header = f"Epoch: [{epoch + 1}/{recipe.epochs}]"
            progress = engine.Progress(header, len(train_loader), every_s=log_every_s, dist=dist, device=device)
            _train_epoch(objective, model, train_loader, mixup, optimizer, ema, device, progress, ckpt_path, epoch + 1)
            scheduler.step(epoch + 1)
            train = progress.summary()
            metrics = {"epoch": epoch + 1, "train_loss": train["loss"], "lr": optimizer.param_groups[0]["lr"],
                       "val_top1": engine.accuracy(model, val_loader, device, every_s=log_every_s, header="Val:")["top1"]}
            if ema is not None:
                metrics["val_top1_ema"] = engine.accuracy(ema.module, val_loader, device, every_s=log_every_s,
                                                          header="Val (EMA):")["top1"]
            metrics["epoch_seconds"] = time.perf_counter() - progress.t0  # validation included
            rng = rng_states(dist)
            if dist.is_main:
                engine.save_state(ckpt_path, model, described, tracker.run_id, ema=ema, optimizer=optimizer.state_dict(),
                                  lr_scheduler=scheduler.state_dict(), epoch=epoch + 1, rng=rng)
                engine.append_row(log_path, metrics)
                speed = {"images_per_s": train["images_per_s"], "data_wait": train["data_wait"]}  # timings: MLflow and log only
                tracker.log_metrics({**{k: v for k, v in metrics.items() if k != "epoch"}, **speed}, step=epoch + 1)
                ema_note = f" (EMA {metrics['val_top1_ema']:.2f})" if ema is not None else ""
                print(f"{header} done in {engine.duration(metrics['epoch_seconds'])}: train loss {train['loss']:.4f}, "
                      f"val top-1 {metrics['val_top1']:.2f}{ema_note}, {train['images_per_s']:.0f} img/s, "
                      f"data wait {100 * train['data_wait']:.0f}%", flush=True)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < recipe.epochs:
                tracker.finish("KILLED")
                return metrics
        result = {"model": model_name, "classes": len(classes), "epochs": recipe.epochs, **metrics}
        if dist.is_main:
            engine.save_state(out / "model.pth", model, described, tracker.run_id, ema=ema, epoch=recipe.epochs)
            write_json(out / "result.json", result)
            for path in (out / "result.json", log_path):
                tracker.log_artifact(path)
    return result


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


def _train_epoch(objective, model, loader, mixup, optimizer, ema, device, progress, ckpt_path, epoch: int) -> None:
    objective.train()
    for data, (images, targets) in engine.timed(loader):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        loss = engine.train_step(objective, images, targets, optimizer, amp=engine.autocast(device),
                                 where=f"epoch {epoch}, step {progress.done + 1}", ckpt_path=ckpt_path)
        if ema is not None:
            ema.update(model)
        progress.step(images=images.shape[0], data=data, loss=loss, lr=optimizer.param_groups[0]["lr"])


def _last_row(log_path: Path) -> dict:
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def _resume(ckpt: dict, path, model, ema, optimizer, scheduler, rank: int) -> tuple[int, str | None]:
    model.load_state_dict(extract_state_dict(ckpt, path))
    if ema is not None:
        ema.module.load_state_dict(extract_state_dict(ckpt, path, ema=True))
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["lr_scheduler"])
    restore_rng(ckpt["rng"], rank)
    return int(ckpt["epoch"]), ckpt.get("mlflow_run_id")
