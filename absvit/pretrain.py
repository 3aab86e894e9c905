"""ImageNet pretraining (``absvit pretrain``) with timm's own recipe pieces.

Output folder: ``checkpoint.pth`` (official layout plus resume state, rewritten atomically
after every epoch), ``metrics.jsonl`` (one line per epoch), and when the run is complete
``model.pth`` (the final weights, official layout) and ``result.json`` (final metrics). Both
``.pth`` files describe themselves: model name (``arch``), ``img_size``, ``classes``, and the
run's identity (model, recipe, classes, world size, and the train / val folders by content:
``absvit.digests``). A restarted job resumes from
``checkpoint.pth`` only if it belongs to the same run, and ends exactly where an
uninterrupted run would.

The input pipeline is timm's: on CUDA its prefetcher (uint8 batches through pinned memory, copied
on a side stream, normalised and randomly erased on the GPU; workers only decode, crop and
RandAugment), persistent workers on every device. Mixup/CutMix runs on the device in the main
process (timm's ``Mixup``; on a GPU it costs nothing and its draws are part of the checkpointed
RNG state). Each sample is augmented under its own seed (``data.sampling.SampleSeeds``), so neither
the number of workers nor their history changes what a run computes. The loop is ``engine.train_one_epoch``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import timm
import torch
from timm.data import Mixup, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.loader import PrefetchLoader, fast_collate
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from absvit import engine, runtime
from absvit.checkpoint import checkpoint_to_resume, resumable, resume, rng_states, save_state, truncate_log
from absvit.digests import tree_digest
from absvit.models.init import mimetic_init_, sincos_pos_embed_
from absvit.data.readers import ClassFolder, label_space
from absvit.data.sampling import SampleSeeds, Seeded
from absvit.errors import UsageError
from absvit.formats import hms
from absvit.io import append_jsonl, write_json
from absvit.models import require_model
from absvit.progress import LOG_EVERY_S, Progress
from absvit.recipe import PretrainRecipe, check_patch_multiple
from absvit.tracking import Tracker, run_tags


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

    ``fresh_on_change``: a checkpoint of a different run in ``out_dir`` is moved aside instead of refused;
    ``stop_after_epoch``: end (as a killed job would) after that epoch.

    Longer than most functions here on purpose: the run's set-up, resume and epochs read top to bottom, as DeiT's
    ``main()`` does; the loop itself is ``engine.train_one_epoch``, the epoch's bookkeeping ``end_of_epoch`` and
    ``report_epoch``."""
    require_model(model_name)
    check_patch_multiple(recipe.img_size, model_name, patch=patch_size(model_name))  # before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dist, device = runtime.setup(recipe.seed)

    data_root = Path(data_root)
    classes = label_space(str(data_root / "train"))
    train_loader, val_loader = loaders(data_root, classes, recipe, dist, device, prefetch=device.type == "cuda")
    model, optimizer, scheduler, ema, mixup, criterion = build(model_name, len(classes), recipe, device,
                                                               updates_per_epoch=len(train_loader))

    ckpt_path = out / "checkpoint.pth"
    identity = {"model": model_name, "recipe": recipe.identity(), "classes": list(classes),
                "inputs": {split: tree_digest(data_root / split) for split in ("train", "val")},
                "world_size": dist.world_size}
    described = {"arch": model_name, "img_size": recipe.img_size, "classes": list(classes), "run": identity}
    start, run_id = 0, None
    ckpt = checkpoint_to_resume(out, identity, fresh_on_change=fresh_on_change)
    if ckpt is not None:
        start, run_id = resume(ckpt, ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                               rank=dist.rank, counter="epoch")
        truncate_log(out / "metrics.jsonl", "epoch", start)
        print(f"resuming {model_name} from {ckpt_path} at epoch {start}", flush=True)
    if recipe.sched_on_steps:
        scheduler.step_update(start * len(train_loader))
    else:
        scheduler.step(start)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    objective = runtime.distributed(TrainingLoss(model, criterion, recipe.var_weight), dist, device)
    objective = runtime.compiled(objective, recipe.compile, device)

    params = {"model": model_name, "data_root": str(data_root), "num_classes": len(classes),
              "world_size": dist.world_size, "recipe": recipe.to_dict()}
    with Tracker(run_name or f"pretrain/{model_name}", uri=tracking_uri, run_id=run_id, params=params,
                 tags=run_tags("pretrain", preset, run or out.name, seed=recipe.seed),
                 enabled=track and dist.is_main) as tracker:
        metrics = _last_row(out / "metrics.jsonl") if start >= recipe.epochs else {}  # resuming a finished run

        def after_step(update: int) -> None:  # the EMA, and a schedule stepped per update
            if ema is not None:
                ema.update(model)
            if recipe.sched_on_steps:
                scheduler.step_update(update)

        for epoch in range(start + 1, recipe.epochs + 1):
            header = f"Epoch: [{epoch}/{recipe.epochs}]"
            train_loader.sampler.set_epoch(epoch - 1)
            progress = Progress(header, len(train_loader), every_s=log_every_s, dist=dist, device=device)
            finite = engine.FiniteCheck(ckpt_path, dist=dist)
            engine.train_one_epoch(objective, train_loader, optimizer, device, progress=progress, finite=finite,
                                   where=f"epoch {epoch}, step {{step}}", mixup=mixup,
                                   on_step=lambda step, *_, done=(epoch - 1) * len(train_loader): after_step(done + step))
            scheduler.step(epoch)  # (per update, stepped in after_step: no-op here)
            train = progress.summary()  # a collective call with several processes
            metrics = end_of_epoch(epoch, train, progress.t0, model, ema, optimizer, val_loader, device, log_every_s)
            rng = rng_states(dist)  # every process's (a collective call)
            if dist.is_main:
                with resumable(ckpt_path, f"epoch {epoch - 1}" if epoch > 1 else None):  # the one on disk: the last epoch's
                    save_state(ckpt_path, model, described, tracker.run_id, ema=ema, optimizer=optimizer.state_dict(),
                               lr_scheduler=scheduler.state_dict(), epoch=epoch, rng=rng)
                report_epoch(header, metrics, train, out, tracker)
            if stop_after_epoch is not None and stop_after_epoch <= epoch < recipe.epochs:
                tracker.finish("KILLED")
                return metrics
        result = {"model": model_name, "classes": len(classes), "epochs": recipe.epochs, **metrics}
        if dist.is_main:
            with resumable(ckpt_path, f"epoch {recipe.epochs}"):
                save_state(out / "model.pth", model, described, tracker.run_id, ema=ema, epoch=recipe.epochs)
            write_json(out / "result.json", result)
            for path in (out / "result.json", out / "metrics.jsonl"):
                tracker.log_artifact(path)
    return result


def end_of_epoch(epoch: int, train: dict, t0: float, model, ema, optimizer, val_loader, device, log_every_s) -> dict:
    """The epoch's row of metrics.jsonl: train loss (``train``: the epoch's ``Progress.summary()``) and lr,
    validation top-1 of the model (and of its EMA), and the seconds since ``t0`` (validation included)."""
    metrics = {"epoch": epoch, "train_loss": train["loss"], "lr": optimizer.param_groups[0]["lr"],
               "val_top1": engine.accuracy(model, val_loader, device, every_s=log_every_s, header="Val:")["top1"]}
    if ema is not None:
        metrics["val_top1_ema"] = engine.accuracy(ema.module, val_loader, device, every_s=log_every_s,
                                                  header="Val (EMA):")["top1"]
    metrics["epoch_seconds"] = time.perf_counter() - t0
    return metrics


def report_epoch(header: str, metrics: dict, train: dict, out: Path, tracker: Tracker) -> None:
    """The epoch's row in metrics.jsonl and MLflow (timings: MLflow and the log only), and its summary line."""
    append_jsonl(out / "metrics.jsonl", metrics)
    speed = {"images_per_s": train["images_per_s"], "data_wait": train["data_wait"]}
    tracker.log_metrics({**{k: v for k, v in metrics.items() if k != "epoch"}, **speed}, step=metrics["epoch"])
    ema_note = f" (EMA {metrics['val_top1_ema']:.2f})" if "val_top1_ema" in metrics else ""
    print(f"{header} done in {hms(metrics['epoch_seconds'])}: train loss {train['loss']:.4f}, "
          f"val top-1 {metrics['val_top1']:.2f}{ema_note}, {train['images_per_s']:.0f} img/s, "
          f"data wait {100 * train['data_wait']:.0f}%", flush=True)


def patch_size(model_name: str) -> int | None:
    """The model's (square) patch size, from a build on the meta device (shapes, no storage: milliseconds);
    None for a model without a patch embedding."""
    with torch.device("meta"):
        size = getattr(getattr(timm.create_model(model_name), "patch_embed", None), "patch_size", None)
    if size is None:
        return None
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    return size[0] if size[0] == size[1] else None  # a non-square patch: not checked


def build(model_name: str, num_classes: int, recipe: PretrainRecipe, device, *, updates_per_epoch: int):
    """The recipe's model (timm's init, or ``recipe.init`` / ``recipe.pos_embed``: absvit.models.init), optimizer
    (fused AdamW on CUDA), scheduler (per epoch, or per update with ``recipe.sched_on_steps``), EMA, mixup and
    criterion."""
    model = timm.create_model(model_name, num_classes=num_classes, img_size=recipe.img_size,
                              drop_path_rate=recipe.drop_path)
    if recipe.init == "mimetic":
        mimetic_init_(model, torch.Generator().manual_seed(recipe.seed))
    if recipe.pos_embed == "sincos":
        sincos_pos_embed_(model)
    model.to(device)
    fused = {"fused": True} if device.type == "cuda" and recipe.opt.lower() in ("adam", "adamw") else {}
    optimizer = create_optimizer_v2(model, recipe.opt, lr=recipe.scaled_lr, weight_decay=recipe.weight_decay, **fused)
    scheduler, _ = create_scheduler_v2(optimizer, recipe.sched, num_epochs=recipe.epochs, min_lr=recipe.min_lr,
                                       warmup_lr=recipe.warmup_lr, warmup_epochs=recipe.warmup_epochs,
                                       step_on_epochs=not recipe.sched_on_steps, updates_per_epoch=updates_per_epoch)
    ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.model_ema else None
    mixup = (Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, label_smoothing=recipe.smoothing,
                   num_classes=num_classes) if recipe.mixup > 0 or recipe.cutmix > 0 else None)
    criterion = SoftTargetCrossEntropy() if mixup else LabelSmoothingCrossEntropy(recipe.smoothing)
    return model, optimizer, scheduler, ema, mixup, criterion


def loaders(root: Path, classes, recipe: PretrainRecipe, dist: runtime.DistInfo, device, *, prefetch: bool):
    """The training loader (shuffled, repeated-augmentation or distributed sampler, per-sample seeds;
    with ``prefetch``, timm's CUDA prefetcher) and the validation loader (normalised on the workers).

    Without the prefetcher (CPU) the workers normalise and erase too: on a CPU the main process's
    time is the model's, and a copy to the device does not exist to overlap with."""
    train_tf = create_transform(recipe.img_size, is_training=True, color_jitter=recipe.color_jitter,
                                auto_augment=recipe.auto_augment or None, interpolation=recipe.interpolation,
                                re_prob=recipe.reprob, re_mode="pixel", re_count=1, use_prefetcher=prefetch)
    eval_tf = create_transform(recipe.img_size, is_training=False, interpolation=recipe.interpolation,
                               crop_pct=recipe.crop_pct)
    train_set, val_set = ClassFolder(root / "train", classes, train_tf), ClassFolder(root / "val", classes, eval_tf)

    per_process = recipe.batch_size // dist.world_size
    if recipe.repeated_aug:
        sampler = RepeatAugSampler(train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True)
    else:  # one process: a shuffle that is a function of (seed, epoch), as with several
        sampler = torch.utils.data.DistributedSampler(train_set, dist.world_size, dist.rank, shuffle=True, seed=recipe.seed)
    sampler = SampleSeeds(sampler, seed=recipe.seed, rank=dist.rank)
    # own generators: making an iterator must not draw from the global RNG (persistent workers make one
    # iterator per run, not per epoch, so a resumed run would draw where the uninterrupted one did not)
    common = dict(num_workers=recipe.workers, pin_memory=device.type == "cuda", persistent_workers=recipe.workers > 0,
                  generator=torch.Generator().manual_seed(recipe.seed))
    train = torch.utils.data.DataLoader(Seeded(train_set), batch_size=per_process, sampler=sampler, drop_last=True,
                                        collate_fn=fast_collate if prefetch else None, **common)
    val = torch.utils.data.DataLoader(val_set, batch_size=per_process, shuffle=False, **common)
    if len(train) == 0:
        raise UsageError(f"recipe key batch_size: {recipe.batch_size} ({per_process} per process) is larger than the "
                         f"training set {train_set.root} ({len(train_set)} images); lower batch_size")
    if prefetch:
        train = PrefetchLoader(train, device=device, re_prob=recipe.reprob, re_mode="pixel", re_count=1)
    return train, val


def _last_row(log_path: Path) -> dict:
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    return json.loads(lines[-1]) if lines else {}
