"""``absvit vl-vqa`` / ``absvit vl-retrieval``: an ImageNet ViT / AbSViT fine-tuned as the visual encoder of METER.

Output folder: ``checkpoint.pth`` (everything a resume needs, rewritten atomically after every epoch),
``metrics.jsonl`` (one line per epoch), and when the run is complete ``model.pth`` (the fine-tuned weights and what
rebuilds the model: task, encoder, text encoder, answer vocabulary, recipe), ``result.json`` (VQA accuracy on val2014,
or retrieval recall@1/5/10 both ways on Flickr30k's test split) and, for VQA with ``trainval``, ``submission.json``
for the evaluation server. A restarted job resumes from ``checkpoint.pth`` only if it belongs to the same run
(task, recipe, world size, and by content the encoder's file, the text encoder's folder, the data folder and the
answer vocabulary: ``absvit.digests``) and ends exactly where an uninterrupted one would. Paths are recorded relative to
the project (``recorded_path``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import timm
import torch

from absvit import engine, runtime
from absvit.checkpoint import (checkpoint_to_resume, read_checkpoint, resumable, resume, rng_states, save_state,
                               truncate_log)
from absvit.data.sampling import SampleSeeds, Seeded
from absvit.digests import recorded_path
from absvit.data.readers import unreadable_images
from absvit.errors import CheckpointError, DatasetError, UsageError
from absvit.evaluate import load_model
from absvit.io import append_jsonl, write_json
from absvit.progress import LOG_EVERY_S, Progress
from absvit.vl.recipe import VLRecipe
from absvit.tracking import Tracker, run_tags
from absvit.vl.encoders import TextEncoder, VisualEncoder, declared, tokenizer_of
from absvit.vl.fusion import METER
from absvit.vl.model import VQAHead, VQAObjective, lr_schedule, param_groups
from absvit.vl.tasks import TASKS


def build(task_name: str, encoder_checkpoint, text_encoder, data_root, recipe: VLRecipe, *, model_name=None):
    """(the task with its data, the objective (METER + head) on this encoder, what the encoder's file records:
    model name, classes, the MLflow run that made it). Every input is checked before the data is read: the text
    encoder's folder, the encoder's input size against ``recipe.img_size``."""
    tokenizer = tokenizer_of(text_encoder)
    vit, classes, _, ckpt = load_model(encoder_checkpoint, model_name=model_name)
    size = tuple(vit.patch_embed.img_size)
    if not getattr(vit, "dynamic_img_size", False) and size != (recipe.img_size, recipe.img_size):
        raise UsageError(f"recipe.img_size: {recipe.img_size} does not fit the encoder {encoder_checkpoint} "
                         f"({vit.pretrained_cfg['architecture']}), which takes {size[0]}x{size[1]} images; expected "
                         f"{size[0]}")
    task = TASKS[task_name](data_root, recipe, tokenizer)
    text = TextEncoder(text_encoder)
    visual = VisualEncoder(vit, text_dim=text.hidden_size, feedback=recipe.feedback)
    meter = METER(visual, text, hidden=recipe.hidden, heads=recipe.heads, layers=recipe.layers,
                  mlp_ratio=recipe.mlp_ratio, dropout=recipe.dropout)
    encoder = {"model": vit.pretrained_cfg["architecture"], "classes": classes, "source": ckpt.get("mlflow_run_id")}
    return task, task.objective(meter), encoder


def leave_out_unreadable(task, task_name: str, data_root, recipe: VLRecipe, out: Path, data_digest: str):
    """(the task, its unreadable images: path -> why): every image the job reads decoded once before training
    (``unreadable_images``; the answer is kept in ``out/unreadable_images.json`` for the same data, so a resumed job
    does not decode them again). An unreadable image fails the job here, named, unless ``recipe.skip_bad_images``:
    then its questions / captions are left out and it is counted in the result."""
    cache = out / "unreadable_images.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if known.get("data") == data_digest:
        bad = known["unreadable"]
    else:
        bad = unreadable_images(task.images(), threads=max(recipe.workers, 1))
        write_json(cache, {"data": data_digest, "unreadable": bad})
    if bad and not recipe.skip_bad_images:
        first = min(bad)
        raise DatasetError(f"{bad[first]} ({len(bad)} of the {len(task.images())} images this job reads do not "
                           f"decode, listed in {cache}; set skip_bad_images: true in the recipe to leave them out)")
    if bad:
        task = TASKS[task_name](data_root, recipe, task.tokenizer, leave_out=frozenset(bad))
        print(f"left out {len(bad)} unreadable image(s) and their texts (skip_bad_images; listed in {cache})", flush=True)
    return task, bad


def load_finetuned(path, *, device="cpu"):
    """(objective, described) of a finished run's ``model.pth``: the model rebuilt from what the file records (the
    encoder's architecture and the text encoder folder must be where they were)."""
    ckpt = read_checkpoint(path)
    vl = ckpt.get("vl")
    if not vl:
        raise CheckpointError(f"{path}: not a model.pth of `absvit vl-vqa` / `vl-retrieval` (no 'vl' entry)")
    recipe = VLRecipe.from_dict(vl["recipe"], where=f"{path}: recipe")
    vit = timm.create_model(vl["encoder_model"], num_classes=len(vl["encoder_classes"]), img_size=recipe.img_size)
    # (VisualEncoder drops the classifier, as it did when the model was trained)
    text = TextEncoder(vl["text_encoder"])
    meter = METER(VisualEncoder(vit, text_dim=text.hidden_size, feedback=recipe.feedback), text, hidden=recipe.hidden,
                  heads=recipe.heads, layers=recipe.layers, mlp_ratio=recipe.mlp_ratio, dropout=recipe.dropout)
    if vl["task"] != "vqa":
        raise CheckpointError(f"{path}: a {vl['task']} model; rebuilding is for VQA models (the figure's)")
    objective = VQAObjective(meter, VQAHead(2 * recipe.hidden, len(vl["vocab"])), var_weight=recipe.var_weight)
    objective.load_state_dict(ckpt["model"])
    return objective.to(device).eval(), vl


def loader(task, recipe: VLRecipe, dist, device):
    """The training loader of micro-batches (``recipe.micro_batch``; ``accum_steps`` of them make one update): a
    (seed, epoch)-shuffled sampler, each sample augmented under its own seed."""
    pairs = task.train_pairs()
    sampler = torch.utils.data.DistributedSampler(pairs, dist.world_size, dist.rank, shuffle=True, seed=recipe.seed)
    return torch.utils.data.DataLoader(Seeded(pairs), batch_size=recipe.micro_batch(dist.world_size),
                                       sampler=SampleSeeds(sampler, seed=recipe.seed, rank=dist.rank), drop_last=True,
                                       num_workers=recipe.workers, pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(recipe.seed))


def updates_per_epoch(train_loader, recipe: VLRecipe) -> int:
    """Optimiser updates per epoch: whole groups of ``accum_steps`` micro-batches (a last incomplete one is left
    out, as the loader's last incomplete micro-batch is)."""
    return len(train_loader) // recipe.accum_steps


def finetune(task_name: str, encoder_checkpoint, text_encoder, data_root, out_dir, recipe: VLRecipe, *,
             model_name: str | None = None, tracking_uri: str | None = None, track: bool = True,
             run_name: str | None = None, preset: str | None = None, run: str | None = None,
             stop_after_epoch: int | None = None, fresh_on_change: bool = False,
             log_every_s: float = LOG_EVERY_S) -> dict:
    """Fine-tune on ``task_name`` ("vqa", "retrieval") and evaluate. Longer than most functions here on purpose:
    set-up, resume and the epochs read top to bottom, as ``absvit.pretrain.pretrain`` does."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dist, device = runtime.setup(recipe.seed)
    task, objective, encoder_file = build(task_name, encoder_checkpoint, text_encoder, data_root, recipe,
                                          model_name=model_name)
    encoder, source = encoder_file["model"], encoder_file["source"]
    inputs = task.run_inputs(encoder_checkpoint, text_encoder)
    task, unreadable = leave_out_unreadable(task, task_name, data_root, recipe, out, inputs["data"])
    objective.to(device)
    train_loader = loader(task, recipe, dist, device)
    optimizer = torch.optim.AdamW(param_groups(objective, lr=recipe.lr, fusion_mult=recipe.fusion_mult,
                                               head_mult=recipe.head_mult, feedback_mult=recipe.feedback_mult,
                                               weight_decay=recipe.weight_decay), betas=(0.9, 0.98), eps=1e-8)
    steps = updates_per_epoch(train_loader, recipe)
    scheduler = lr_schedule(optimizer, recipe.epochs * steps, recipe.warmup)
    ckpt_path = out / "checkpoint.pth"
    identity = {"task": task_name, "encoder_model": encoder, "inputs": inputs,
                "recipe": recipe.identity(), "world_size": dist.world_size}
    described = {"arch": f"meter-{task_name}/{encoder}", "img_size": recipe.img_size, "classes": None, "run": identity,
                 "vl": {"task": task_name, "encoder_model": encoder, "encoder": recorded_path(encoder_checkpoint),
                        "text_encoder": recorded_path(text_encoder), "data_root": recorded_path(data_root),
                        "recipe": recipe.to_dict(), "encoder_classes": encoder_file["classes"], **task.described}}
    start, run_id = 0, None
    ckpt = checkpoint_to_resume(out, identity, fresh_on_change=fresh_on_change)
    if ckpt is not None:
        start, run_id = resume(ckpt, ckpt_path, model=objective, optimizer=optimizer, scheduler=scheduler,
                               rank=dist.rank, counter="epoch")
        truncate_log(out / "metrics.jsonl", "epoch", start)
        print(f"resuming {task_name} ({encoder}) from {ckpt_path} at epoch {start}", flush=True)
    scheduler.step_update(start * steps)
    trained = runtime.distributed(objective, dist, device)

    params = {"task": task_name, "encoder": str(encoder_checkpoint), "encoder_model": encoder,
              "text_encoder": str(text_encoder), **{f"text_encoder_{k}": v for k, v in declared(text_encoder).items()},
              "data_root": str(data_root), "world_size": dist.world_size,
              "recipe": recipe.to_dict(), "source_run_id": source, **{k: v for k, v in task.described.items() if k != "vocab"}}
    tags = run_tags(f"vl-{task_name}", preset, run or out.parent.name, seed=recipe.seed, source_run_id=source)
    with Tracker(run_name or f"vl-{task_name}/{encoder}", uri=tracking_uri, run_id=run_id, params=params, tags=tags,
                 enabled=track and dist.is_main) as tracker:
        for epoch in range(start + 1, recipe.epochs + 1):
            header = f"Epoch: [{epoch}/{recipe.epochs}] ({task_name})"
            train_loader.sampler.set_epoch(epoch - 1)
            if hasattr(task.train, "set_epoch"):  # retrieval's negatives are drawn per (seed, epoch, sample)
                task.train.set_epoch(epoch - 1)
            progress = Progress(header, steps, every_s=log_every_s, dist=dist, device=device)
            done = (epoch - 1) * steps  # the schedule is per update over the whole run
            engine.train_one_epoch(trained, train_loader, optimizer, device, progress=progress,
                                   finite=engine.FiniteCheck(ckpt_path, dist=dist), where=f"epoch {epoch}, step {{step}}",
                                   on_step=lambda step, loss, lr, done=done: scheduler.step_update(done + step),
                                   accum_steps=recipe.accum_steps)
            train = progress.summary()
            rng = rng_states(dist)
            row = {"epoch": epoch, "train_loss": train["loss"], "lr": optimizer.param_groups[0]["lr"],
                   "seconds": time.perf_counter() - progress.t0}
            if dist.is_main:
                with resumable(ckpt_path, f"epoch {epoch - 1}" if epoch > 1 else None):
                    save_state(ckpt_path, objective, described, tracker.run_id, optimizer=optimizer.state_dict(),
                               lr_scheduler=scheduler.state_dict(), epoch=epoch, rng=rng)
                append_jsonl(out / "metrics.jsonl", row)
                tracker.log_metrics({**{k: v for k, v in row.items() if k != "epoch"},
                                     "images_per_s": train["images_per_s"]}, step=epoch)
                print(f"{header} done: train loss {train['loss']:.4f}, {train['images_per_s']:.0f} img/s", flush=True)
            if stop_after_epoch is not None and stop_after_epoch <= epoch < recipe.epochs:
                tracker.finish("KILLED")
                return row
        result = {"task": task_name, "encoder": encoder, "checkpoint": str(encoder_checkpoint), "seed": recipe.seed,
                  "epochs": recipe.epochs, "updates": recipe.epochs * steps, "batch_size": recipe.batch_size,
                  "train_splits": task.described["train_splits"], "skipped_images": len(unreadable),
                  "skipped": sorted(unreadable), "feedback": recipe.feedback,
                  "prior_loss": recipe.prior_loss,
                  **{f"text_encoder_{k}": v for k, v in declared(text_encoder).items()}}
        if dist.is_main:
            # the last epoch's training loss (from the log: a job resumed after its last epoch trains no more), and
            # for retrieval the loss of scores that ignore the pair, which Table 4's words compare it with
            last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
            result["final_train_loss"] = last["train_loss"]
            if hasattr(objective, "chance_loss"):
                result["chance_loss"] = objective.chance_loss
            result.update(task.evaluate(objective, device, workers=recipe.workers, every_s=log_every_s))
            if "submission" in result:
                write_json(out / "submission.json", result.pop("submission"))
            with resumable(ckpt_path, f"epoch {recipe.epochs}"):
                save_state(out / "model.pth", objective, described, tracker.run_id, epoch=recipe.epochs)
            write_json(out / "result.json", result)
            tracker.log_metrics({k: v for k, v in result.items() if isinstance(v, float)})
            for path in (out / "result.json", out / "metrics.jsonl"):
                tracker.log_artifact(path)
    return result
