"""Robustness evaluation (``absvit evaluate``): clean, ImageNet-C, -A, -R and -Sketch.

One JSON file per (model, suite) with every number, mirrored into MLflow. ImageNet-C gives
per (corruption, severity) top-1, per-corruption error and CE (normalised by AlexNet's
error), mCE, and the unnormalised mean error; -A and -R restrict the logits to the classes
they hold before the argmax.
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.data import create_transform

import absvit.models  # noqa: F401  (registers the models)
from absvit.checkpoint import check_state_dict, extract_state_dict, read_checkpoint
from absvit.data import SUITES
from absvit.data.corruptions import ALEXNET_ERR, CORRUPTIONS, SEVERITIES
from absvit.data.readers import ClassFolder, DatasetError, imagenet_c_folders, label_space
from absvit.io import write_json
from absvit.tracking import Tracker

SUBSET_SUITES = {"imagenet-a", "imagenet-r"}  # 200 of the 1000 classes


@torch.inference_mode()
def accuracy(model, dataset: ClassFolder, *, restrict: list[int] | None, batch_size: int, workers: int, device) -> dict:
    """Top-1 / top-5 (%) over ``dataset``; with ``restrict``, only those classes' logits compete."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    index = torch.tensor(restrict) if restrict is not None else None
    model.eval()
    top1 = top5 = total = 0
    for images, labels in loader:
        logits = model(images.to(device)).float().cpu()
        if index is not None:
            logits = logits[:, index]
        k = min(5, logits.shape[1])
        pred = logits.topk(k, dim=-1).indices
        if index is not None:
            pred = index[pred]
        top1 += (pred[:, 0] == labels).sum().item()
        top5 += (pred == labels[:, None]).any(-1).sum().item()
        total += labels.numel()
    return {"top1": 100.0 * top1 / total, "top5": 100.0 * top5 / total, "images": total}


def corruption_errors(top1: dict[tuple[str, int], float]) -> dict:
    """From top-1 (%) per (corruption, severity): errors, AlexNet-normalised CE and mCE."""
    out = {"error": {}, "ce": {}}
    for c in CORRUPTIONS:
        err = sum(1 - top1[(c, s)] / 100 for s in SEVERITIES) / len(SEVERITIES)
        out["error"][c] = 100 * err
        out["ce"][c] = 100 * err / ALEXNET_ERR[c]
    out["mce"] = sum(out["ce"].values()) / len(CORRUPTIONS)
    out["mean_error"] = sum(out["error"].values()) / len(CORRUPTIONS)
    return out


def load_model(model_name: str, checkpoint, *, classes_spec: str | None, ema: bool, img_size: int):
    """Model + label space. Our own checkpoints record their classes; official ones are ImageNet-1k."""
    ckpt = read_checkpoint(checkpoint)
    classes = ckpt.get("classes") if classes_spec is None else None
    classes = list(classes) if classes else label_space(classes_spec or "imagenet-1k")
    state = extract_state_dict(ckpt, checkpoint, ema=ema)
    head = state.get("head.weight")
    if head is not None and head.shape[0] != len(classes):
        raise DatasetError(f"{checkpoint}: the checkpoint's head has {head.shape[0]} classes but the label space "
                           f"({classes_spec or 'recorded in the checkpoint'}) has {len(classes)}")
    model = timm.create_model(model_name, num_classes=len(classes), img_size=img_size)
    check_state_dict(model, state, checkpoint)
    model.load_state_dict(state)
    return model, classes


def evaluate(model_name: str, checkpoint, suite: str, data, out_json, *, ema: bool = False, classes_spec: str | None = None,
             img_size: int = 224, crop_pct: float = 0.875, interpolation: str = "bicubic", batch_size: int = 128,
             workers: int = 8, tracking_uri: str | None = None, track: bool = True, run_name: str | None = None) -> dict:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {list(SUITES)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, classes = load_model(model_name, checkpoint, classes_spec=classes_spec, ema=ema, img_size=img_size)
    model.to(device)
    tf = create_transform(img_size, is_training=False, interpolation=interpolation, crop_pct=crop_pct)
    run = dict(batch_size=batch_size, workers=workers, device=device)

    result: dict = {"model": model_name, "checkpoint": str(checkpoint), "suite": suite, "ema": ema, "data": str(data)}
    if suite == "imagenet-c":
        top1 = {key: accuracy(model, ClassFolder(folder, classes, tf), restrict=None, **run)["top1"]
                for key, folder in imagenet_c_folders(data).items()}
        result["top1"] = {c: {str(s): top1[(c, s)] for s in SEVERITIES} for c in CORRUPTIONS}
        result.update(corruption_errors(top1))
        result["mean_top1"] = sum(top1.values()) / len(top1)
        metrics = {"mce": result["mce"], "mean_error": result["mean_error"], "mean_top1": result["mean_top1"],
                   **{f"ce.{c}": v for c, v in result["ce"].items()}}
    else:
        dataset = ClassFolder(data, classes, tf, subset=suite in SUBSET_SUITES)
        restrict = dataset.class_indices if suite in SUBSET_SUITES else None
        result.update(accuracy(model, dataset, restrict=restrict, **run))
        result["classes"] = len(dataset.class_indices)
        metrics = {"top1": result["top1"], "top5": result["top5"]}

    write_json(out_json, result)
    tracker = Tracker(run_name or f"evaluate/{model_name}/{suite}", uri=tracking_uri, enabled=track,
                      params={"model": model_name, "checkpoint": str(checkpoint), "suite": suite, "ema": ema,
                              "data": str(data), "img_size": img_size, "crop_pct": crop_pct})
    tracker.log_metrics(metrics)
    tracker.log_artifact(Path(out_json))
    tracker.finish()
    return result
