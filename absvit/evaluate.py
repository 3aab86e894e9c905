"""Robustness evaluation (``absvit evaluate``): clean, ImageNet-C, -A, -R, -Sketch, and FGSM / PGD.

One JSON file per (model, suite) with every number, mirrored into MLflow. ImageNet-C gives
per (corruption, severity) top-1, per-corruption error and CE (normalised by AlexNet's
error), mCE, and the unnormalised mean error; -A and -R restrict the logits to the classes
they hold before the argmax; FGSM and PGD attack the clean val images (``absvit.attacks``).

Transforms are the official evaluation's: ImageNet-C images are already 224x224 and get only
a centre crop (no resize: resizing to 256 and cropping would zoom in by 1.14); clean val, -A,
-R, -Sketch and the attacked val images are resized (short side img_size / crop_pct, bicubic) and centre-cropped.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision import transforms

from absvit import engine
from absvit.attacks import ATTACKS, Attack, perturb
from absvit.checkpoint import agree, extract_state_dict, read_checkpoint, recorded_setup
from absvit.data import SUITES
from absvit.data.corruptions import ALEXNET_ERR, CORRUPTIONS, SEVERITIES
from absvit.data.readers import SUBSET_SUITES, ClassFolder, imagenet_c_folders, label_space
from absvit.errors import CheckpointError, DatasetError, UsageError
from absvit.io import write_json
from absvit.models import require_model
from absvit.models.weights import check_state_dict
from absvit.progress import LOG_EVERY_S, Progress
from absvit.tracking import Tracker, run_tags


def accuracy(model, dataset: ClassFolder, *, restrict: list[int] | None, batch_size: int, workers: int, device,
             progress: Progress | None = None) -> dict:
    """Top-1 / top-5 (%) over ``dataset``; with ``restrict``, only those classes' logits compete."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                                         pin_memory=torch.device(device).type == "cuda")
    return engine.accuracy(model, loader, device, restrict=restrict, progress=progress)


def attacked_accuracy(model, dataset: ClassFolder, attack: Attack, *, mean, std, seed: int, batch_size: int,
                      workers: int, device, progress: Progress) -> dict:
    """Top-1 / top-5 (%) on adversarial versions of ``dataset``'s images (``absvit.attacks``); a random start draws
    from a generator seeded with ``seed``, on the model's device, in the loader's (fixed) order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                                         pin_memory=torch.device(device).type == "cuda")
    generator = torch.Generator(device=device).manual_seed(seed)

    def attacked(normalized, images, labels):  # the attack in normalised-pixel space, on the model itself
        model = normalized.model
        return model(perturb(model, normalized.normalize(images), labels, attack, mean=mean, std=std,
                             generator=generator))

    metric = engine.TopK(device)
    return engine.evaluate(model, loader, device, metric, progress=progress, forward=attacked, gradients=True).compute()


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


def suite_transform(suite: str, img_size: int, crop_pct: float, interpolation: str):
    """The official evaluation transform of ``suite`` (see the module docstring) up to uint8 tensors: the loader
    workers decode, resize and crop; ``Normalized`` converts and normalises on the model's device (the float
    conversion costs a CPU core about a third of its ImageNet-C throughput: benchmarks/loader.py)."""
    if suite == "imagenet-c":
        return transforms.Compose([transforms.CenterCrop(img_size), transforms.PILToTensor()])
    return create_transform(img_size, is_training=False, interpolation=interpolation, crop_pct=crop_pct,
                            use_prefetcher=True)


class Normalized(torch.nn.Module):
    """``model`` on uint8 images (B, 3, H, W): ``(x / 255 - mean) / std`` on the device first, the same float32
    arithmetic as torchvision's ``ToTensor`` + ``Normalize`` on the CPU. ``normalize`` alone gives the normalised
    images (what FGSM / PGD perturb)."""

    def __init__(self, model: torch.nn.Module, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float().div(255) - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))


def load_model(checkpoint, *, model_name: str | None = None, classes_spec: str | None = None, ema: bool = False,
               img_size: int | None = None):
    """(model, classes, img_size, checkpoint dict); each defaults to what the checkpoint records about itself.

    Our checkpoints record model name, input size and classes; official files their model name and
    input size (in ``args``), and are ImageNet-1k."""
    ckpt = read_checkpoint(checkpoint)
    if "vl" in ckpt or (ckpt.get("run") or {}).get("backbone"):
        made_by = "`absvit vl-vqa` / `vl-retrieval` (a V&L model)" if "vl" in ckpt else "`absvit segment` (a segmenter)"
        raise CheckpointError(f"{checkpoint}: a checkpoint of {made_by}, not an ImageNet classifier; expected the "
                              "model.pth of `absvit pretrain` or a released file")
    recorded = recorded_setup(ckpt)
    if recorded["model"] and not timm.is_model(recorded["model"]):
        recorded["model"] = None  # an official file's name that timm does not know tells us nothing
    model_name = agree("--model", model_name, recorded["model"], checkpoint)
    if model_name is None:
        raise UsageError(f"{checkpoint} does not record its model: give --model (e.g. absvit_tiny_patch16_224)")
    require_model(model_name)
    given = label_space(classes_spec) if classes_spec else None
    classes = agree("--classes", given, recorded["classes"], checkpoint,
                    show=lambda c: f"({len(c)} classes: {', '.join(c[:3])}, ...)")
    classes = classes or label_space("imagenet-1k")
    img_size = agree("--img-size", img_size, recorded["img_size"], checkpoint)
    state = extract_state_dict(ckpt, checkpoint, ema=ema)
    head = state.get("head.weight")
    if head is not None and head.shape[0] != len(classes):
        if classes_spec is None and recorded["classes"] is None:
            raise DatasetError(f"{checkpoint}: the checkpoint's head has {head.shape[0]} classes and the file records "
                               f"no label space, so ImageNet-1k's {len(classes)} were assumed; give --classes (the "
                               "training set's folder of class folders)")
        raise DatasetError(f"{checkpoint}: the checkpoint's head has {head.shape[0]} classes but the label space "
                           f"({classes_spec or 'recorded in the checkpoint'}) has {len(classes)}")
    model = timm.create_model(model_name, num_classes=len(classes), **({"img_size": img_size} if img_size else {}))
    check_state_dict(model, state, checkpoint, arch=recorded["model"])
    model.load_state_dict(state)
    return model, classes, img_size or model.pretrained_cfg["input_size"][-1], ckpt


def evaluate(model_name: str | None, checkpoint, suite: str, data, out_json, **kwargs) -> dict:
    """One suite: ``evaluate_suites`` with one (suite, data, out_json)."""
    return evaluate_suites(model_name, checkpoint, [(suite, data, out_json)], **kwargs)[0]


def evaluate_suites(model_name: str | None, checkpoint, jobs, *, ema: bool = False,
                    classes_spec: str | None = None, img_size: int | None = None, crop_pct: float = 0.875,
                    interpolation: str = "bicubic", batch_size: int = 128, workers: int = 8,
                    tracking_uri: str | None = None, track: bool = True, run_name: str | None = None,
                    preset: str | None = None, run: str | None = None,
                    log_every_s: float = LOG_EVERY_S, attack_seed: int = 0) -> list[dict]:
    """``jobs``: (suite, data root, result JSON) triples, evaluated with one loaded model (one JSON file and
    one MLflow run each; with several suites the MLflow run names get ``/<suite>``). ``model_name``,
    ``classes_spec`` and ``img_size`` default to what the checkpoint records; ``attack_seed``: PGD's random start."""
    for suite, _, _ in jobs:
        if suite not in SUITES:
            raise UsageError(f"unknown suite {suite!r}; expected one of {list(SUITES)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, classes, img_size, ckpt = load_model(checkpoint, model_name=model_name, classes_spec=classes_spec, ema=ema,
                                                img_size=img_size)
    model = Normalized(model, model.pretrained_cfg["mean"], model.pretrained_cfg["std"]).to(device)
    results = []
    for suite, data, out_json in jobs:
        name = f"{run_name}/{suite}" if run_name and len(jobs) > 1 else run_name
        results.append(_evaluate_suite(model, ckpt, checkpoint, suite, data, out_json, classes=classes, img_size=img_size,
                                       ema=ema, crop_pct=crop_pct, interpolation=interpolation, batch_size=batch_size,
                                       workers=workers, device=device, tracking_uri=tracking_uri, track=track,
                                       run_name=name, preset=preset, run=run, log_every_s=log_every_s,
                                       attack_seed=attack_seed))
    return results


def _measure(model, suite: str, data, *, classes, tf, batch_size: int, workers: int, device, log_every_s: float,
             attack_seed: int) -> tuple[dict, dict, int, set]:
    """One suite's numbers: (the result's entries, the MLflow metrics, the classes evaluated, the skipped folders)."""
    run_args = dict(batch_size=batch_size, workers=workers, device=device)
    if suite == "imagenet-c":  # 75 folders, one progress count over all of them
        sets = {key: ClassFolder(folder, classes, tf) for key, folder in imagenet_c_folders(data).items()}
        progress = Progress("Test: [imagenet-c]", sum(-(-len(d) // batch_size) for d in sets.values()),
                            every_s=log_every_s, device=device)
        top1 = {key: accuracy(model, d, restrict=None, progress=progress, **run_args)["top1"] for key, d in sets.items()}
        result = {"top1": {c: {str(s): top1[(c, s)] for s in SEVERITIES} for c in CORRUPTIONS}, **corruption_errors(top1),
                  "mean_top1": sum(top1.values()) / len(top1)}
        metrics = {"mce": result["mce"], "mean_error": result["mean_error"], "mean_top1": result["mean_top1"],
                   **{f"ce.{c}": v for c, v in result["ce"].items()}}
        return result, metrics, len(classes), set().union(*(d.skipped for d in sets.values()))
    dataset = ClassFolder(data, classes, tf, subset=suite in SUBSET_SUITES)
    progress = Progress(f"Test: [{suite}]", -(-len(dataset) // batch_size), every_s=log_every_s, device=device)
    if suite in ATTACKS:
        cfg = model.model.pretrained_cfg
        result = attacked_accuracy(model, dataset, ATTACKS[suite], mean=cfg["mean"], std=cfg["std"], seed=attack_seed,
                                   progress=progress, **run_args)
        result["attack"] = {**asdict(ATTACKS[suite]), "seed": attack_seed, "space": "normalised pixels, per channel / std"}
    else:
        restrict = dataset.class_indices if suite in SUBSET_SUITES else None
        result = accuracy(model, dataset, restrict=restrict, progress=progress, **run_args)
    return result, {"top1": result["top1"], "top5": result["top5"]}, len(dataset.class_indices), set(dataset.skipped)


def _evaluate_suite(model, ckpt: dict, checkpoint, suite: str, data, out_json, *, classes, img_size: int, ema: bool,
                    crop_pct: float, interpolation: str, batch_size: int, workers: int, device, tracking_uri, track: bool,
                    run_name: str | None, preset: str | None, run: str | None, log_every_s: float,
                    attack_seed: int) -> dict:
    model_name = model.model.pretrained_cfg["architecture"]
    tf = suite_transform(suite, img_size, crop_pct, interpolation)
    source = ckpt.get("mlflow_run_id")  # the pretraining run that wrote the checkpoint
    seed = (ckpt.get("run") or {}).get("recipe", {}).get("seed")  # its training seed; a released file has none

    result: dict = {"model": model_name, "checkpoint": str(checkpoint), "suite": suite, "ema": ema, "data": str(data),
                    "img_size": img_size, "transform": " ".join(repr(tf).split()), "source_run_id": source,
                    "seed": seed}
    numbers, metrics, evaluated, skipped = _measure(model, suite, data, classes=classes, tf=tf, batch_size=batch_size,
                                                    workers=workers, device=device, log_every_s=log_every_s,
                                                    attack_seed=attack_seed)
    result.update(numbers)
    # a label space smaller than the set's (a model of some of ImageNet's classes): said in the result
    result.update(classes=evaluated, label_space=len(classes), skipped_classes=len(skipped))
    if skipped:
        print(f"{suite}: evaluated on the {evaluated} class folders of the {len(classes)}-class label space the model "
              f"was trained on; {len(skipped)} folders of other classes skipped", flush=True)

    write_json(out_json, result)
    tracker = Tracker(run_name or f"evaluate/{model_name}/{suite}", uri=tracking_uri, enabled=track,
                      params={"model": model_name, "checkpoint": str(checkpoint), "suite": suite, "ema": ema,
                              "data": str(data), "img_size": img_size, "crop_pct": crop_pct,
                              "transform": result["transform"], "source_run_id": source,
                              **({"attack": result["attack"]} if "attack" in result else {})},
                      tags=run_tags("evaluate", preset, run or Path(checkpoint).parent.name, suite=suite,
                                    seed=seed, source_run_id=source))
    tracker.log_metrics(metrics)
    tracker.log_artifact(Path(out_json))
    tracker.finish()
    return result
