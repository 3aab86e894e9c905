"""The seconds of each job of one rule of the workflow, from ``absvit.throughput``'s rates and sizes.

``estimate_stage`` picks, per rule: a previous run's mean per-job time (CPU presets and local stages), the
reference run's fixed time, the rule's throughput model (``MODELS``), else unknown (NaN). A GPU job's time is
the larger of its GPU time and its loader time (the images / (loader cores x the per-core rate of the transform
that stage runs)), so each estimate also says which of the two bounds it; ``absvit.plan`` sums them into the plan.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from absvit.data import SUITES
from absvit.throughput import (CPU_EMBEDDED, CPU_EVAL, CPU_FIXED, CPU_PRETRAIN, CPU_REF, CPU_SEGMENT, CPU_SHARD, EVAL_SPEEDUP,
                               StageInputs)

Jobs = list[dict[str, str]]  # the wildcards of each job of one rule


@dataclass
class Estimate:
    seconds: list[float]  # each job's
    source: str  # the formula and the numbers used
    bound: str = ""  # "GPU", "loader", "GPU; loader: <which>" or "" (CPU preset, local stage, unknown)


def loader_cores(inp: StageInputs, rule: str, workers: int) -> int:
    """The cores feeding one job: its ``workers`` per GPU process (one process per GPU, as the DDP launch runs),
    at most the CPUs it asks SLURM for, and the main process when it has none."""
    return max(1, min(inp.cpus(rule), workers * max(inp.gpus(rule), 1)))


def bounded(gpu_s: float, loader_s: float) -> tuple[float, str]:
    return (gpu_s, "GPU") if gpu_s >= loader_s else (loader_s, "loader")


def verdict(bounds: dict[str, str]) -> str:
    """One stage's bound from its parts' (job or suite -> "GPU" | "loader"): the common one, else the GPU with the
    loader-bound parts named."""
    kinds = set(bounds.values())
    if len(kinds) <= 1:
        return kinds.pop() if kinds else ""
    return "GPU; loader: " + ", ".join(part for part, b in bounds.items() if b == "loader")


def estimate_stage(inp: StageInputs, rule: str, jobs: Jobs, notes: list[str]) -> Estimate:
    """The seconds of each job of ``rule``: a previous run's mean (CPU presets, and rules that never leave
    this machine), the reference run's fixed time, the rule's throughput model, else unknown (NaN)."""
    local = inp.cpu_preset or not inp.request(rule)  # its times on this machine are what a previous run measured
    if local and rule in inp.previous:
        mean, files = inp.previous[rule]
        return Estimate([mean] * len(jobs), f"previous run: mean {mean:.1f} s/job of {files} benchmark file(s) in "
                                            f"{inp.results}")
    fixed = {**CPU_FIXED, **(CPU_EMBEDDED if inp.cpu_preset else {})}
    if rule in fixed:
        seconds, where = fixed[rule]
        return Estimate([seconds] * len(jobs), f"{seconds} s/job measured on the {where}")
    if rule in MODELS:
        return MODELS[rule](inp, jobs, notes)
    hint = " (a previous run's benchmark files give one)" if local else ""
    return Estimate([math.nan] * len(jobs), f"not estimated: no throughput model for this rule{hint}")


def _sources(formulas: dict, used: dict, jobs: Jobs) -> str:
    return "; ".join([*formulas, *used.values()]) + f"; {len(jobs)} job(s)"


def estimate_shards(inp: StageInputs, jobs: Jobs, notes: list[str]) -> Estimate:
    """One ImageNet-C (corruption, severity) shard per job, at a per-image rate."""
    per_shard = inp.sizes["imagenet-c"][0] / max(len(jobs), 1)
    return Estimate([CPU_SHARD[0] + per_shard * CPU_SHARD[1]] * len(jobs),
                    f"{CPU_SHARD[0]} s + {CPU_SHARD[1]} s/image ({CPU_REF}) x {per_shard:.0f} images/shard")


def estimate_pretrain(inp: StageInputs, jobs: Jobs, notes: list[str]) -> Estimate:
    """One job per run x seed: each epoch's training (the loop's rate on the GPUs, or the training transform on
    the loader cores) and validation passes (``EVAL_SPEEDUP`` x the step, or the evaluation transform)."""
    from absvit.recipe import PretrainRecipe

    p = inp.p
    secs, formulas, used, bounds = [], {}, {}, {}
    g = inp.gpus("pretrain")
    n_train, n_val = inp.sizes["train"][0], inp.sizes["clean"][0]
    train_core, train_src = inp.loader.per_core("pretrain")
    val_core, val_src = inp.loader.per_core("eval")
    for job in jobs:
        spec = p["runs"][job["run"]]
        values = {**p.get("recipe", {}), **({"var_weight": spec["var_weight"]} if "var_weight" in spec else {})}
        recipe = PretrainRecipe.from_dict(values, where=f"presets.{inp.preset}.recipe")
        model = spec["model"]
        if g == 0:
            rate = CPU_PRETRAIN["absvit" if model.startswith("absvit_") else "vit"]
            secs.append(recipe.epochs * n_train / rate)
            formulas[f"{recipe.epochs} epochs x {n_train:,} images / img/s of the job ({CPU_REF}, validation "
                     "included)"] = None
            used[model] = f"{model} {rate:g} img/s"
            continue
        cores = loader_cores(inp, "pretrain", recipe.workers)
        rate, rsrc = inp.rates.train(model, recipe.img_size)
        step, _ = inp.rates.step(model, recipe.img_size)
        passes = 2 if recipe.model_ema else 1
        train_s, bound = bounded(recipe.epochs * n_train / (rate * g), recipe.epochs * n_train / (train_core * cores))
        val_s, _ = bounded(recipe.epochs * passes * n_val / (EVAL_SPEEDUP * step * g),
                           recipe.epochs * passes * n_val / (val_core * cores))
        secs.append(train_s + val_s)
        bounds[job["run"]] = bound
        formulas[f"{recipe.epochs} epochs x max({n_train:,} images / (loop img/s per GPU x {g} GPUs), the same / "
                 f"({cores} loader cores x training transform img/s/core)) + {recipe.epochs} x {passes} validation "
                 f"pass(es) x max({n_val:,} / ({EVAL_SPEEDUP:g} x step x {g}), the same / ({cores} cores x evaluation "
                 "transform img/s/core))"] = None
        used[model] = f"{model} {rate:.0f} img/s per GPU [{rsrc}]: {bound}-bound"
    if g:
        used["loader"] = f"loader [{train_src}; {val_src}]"
    return Estimate(secs, _sources(formulas, used, jobs), verdict(bounds))


def suite_work(suite: str) -> float:
    """One image of ``suite`` in forward passes: 1, or an attack's steps (a forward and backward pass each, about
    ``EVAL_SPEEDUP`` forward passes) plus the classification of the adversarial image."""
    from absvit.attacks import ATTACKS

    return ATTACKS[suite].steps * EVAL_SPEEDUP + 1 if suite in ATTACKS else 1.0


def estimate_evaluate(inp: StageInputs, jobs: Jobs, notes: list[str]) -> Estimate:
    """One job per run and seed evaluating every suite with one loaded model (FGSM / PGD: the clean images,
    attacked), suite after suite: each suite's time is the larger of its forward passes on the GPU and its images
    through that suite's transform on the loader cores."""
    secs, formulas, used, bounds = [], {}, {}, {}
    g = inp.gpus("evaluate")
    ev = inp.p.get("evaluate", {})
    img_size, cores = ev.get("img_size", 224), loader_cores(inp, "evaluate", ev.get("workers", 0))
    passes = sum(inp.sizes[suite][0] * suite_work(suite) for suite in SUITES)
    work = "forward passes (an attack step counts as 3, FGSM 4 per image, PGD 16)"
    for job in jobs:
        model = inp.p["runs"][job["run"]]["model"]
        if g == 0:
            secs.append(CPU_EVAL[0] + passes / CPU_EVAL[1])
            formulas[f"{CPU_EVAL[0]:g} s + the suites' {work} / {CPU_EVAL[1]:g} img/s ({CPU_REF})"] = None
            continue
        step, ssrc = inp.rates.step(model, img_size)
        total, by_suite = 0.0, {}
        for suite in SUITES:
            images = inp.sizes[suite][0]
            seconds, by_suite[suite] = bounded(images * suite_work(suite) / (EVAL_SPEEDUP * step * g),
                                               images / (inp.loader.suite(suite)[0] * cores))
            total += seconds
        secs.append(total)
        bounds.update({s: b for s, b in by_suite.items() if bounds.get(s) != "loader"})
        formulas[f"sum over the suites of max({work} / ({EVAL_SPEEDUP:g} x step img/s x {g} GPU), images / "
                 f"({cores} loader cores x the suite's transform img/s/core))"] = None
        used[model] = f"{model} [{ssrc}]"
    if g:
        used["loader"] = "loader [" + "; ".join(dict.fromkeys(inp.loader.suite(s)[1] for s in SUITES)) + "]"
    sizes_src = ", ".join(f"{s} {n:,} ({src})" for s, (n, src) in inp.sizes.items())
    return Estimate(secs, _sources(formulas, used, jobs) + f". Images: {sizes_src}", verdict(bounds))


def estimate_segment(inp: StageInputs, jobs: Jobs, notes: list[str]) -> Estimate:
    """One job per backbone x dataset x seed: each iteration the larger of the step on the GPUs and the batch
    through the segmentation training transform on the loader cores."""
    from absvit.recipe import SegmentRecipe

    seg = inp.p["segmentation"]
    secs, formulas, used, per_job, bounds = [], {}, {}, {}, {}
    g = inp.gpus("segment")
    core, core_src = inp.loader.per_core("segment")
    for job in jobs:
        name, dataset = job["backbone"], job["dataset"]
        r = SegmentRecipe.from_dict({**seg.get("recipe", {}), **seg["datasets"][dataset].get("recipe", {})},
                                    where=f"presets.{inp.preset}.segmentation.datasets.{dataset}.recipe")
        crop = (r.crop_height, r.crop_width)
        if g == 0:
            secs.append(CPU_SEGMENT[0] + r.iterations * CPU_SEGMENT[1] * r.batch_size * crop[0] * crop[1] / 64 ** 2)
            formulas[f"{CPU_SEGMENT[0]:g} s + iterations x batch x {CPU_SEGMENT[1]} s per 64x64 crop ({CPU_REF})"] = None
            continue
        cores = loader_cores(inp, "segment", r.workers)
        step, ssrc, scaled = inp.rates.segment(seg["backbones"][name]["model"], r.batch_size, crop)
        per_iter, bounds[f"{name}/{dataset}"] = bounded(step / g, r.batch_size / (core * cores))
        secs.append(r.iterations * per_iter)
        formulas[f"iterations x max(step s / {g} GPUs, batch / ({cores} loader cores x img/s/core)) (whole-image "
                 "evaluation not included: under 1% of training)"] = None
        used[ssrc] = ssrc
        per_job[f"{name}/{dataset} {r.iterations:,} x {step:.3f} s{scaled}"] = None
    if g:
        used["loader"] = f"loader [{core_src}]"
    formulas = {**formulas, ", ".join(per_job): None} if per_job else formulas
    return Estimate(secs, _sources(formulas, used, jobs), verdict(bounds))


# V&L: the published sizes (VQAv2 train2014 / val2014 questions; Flickr30k's Karpathy split, 5 captions per image:
# 29,000 train, 1,014 val, 1,000 test images) and the stated assumption that METER's text encoder and fusion add half
# of the visual encoder's cost to each pair
VL_SIZES = {"vqa": {"train": 443_757, "val": 214_354},
            "retrieval": {"train": 145_000, "val": 5_070, "test_pairs": 1_000 * 5_000, "test_images": 1_000}}
VL_OVERHEAD = 1.5


def estimate_vl(inp: StageInputs, jobs: Jobs, notes: list[str]) -> Estimate:
    """One job per task x encoder x seed on the GPUs of its request: per epoch the larger of the training pairs at
    the encoder's bare-step rate / ``VL_OVERHEAD`` and the samples' images through the V&L training transform on the
    loader cores, then the evaluation's forward passes at ``EVAL_SPEEDUP`` x that or its images at the same loader rate
    (an upper bound: evaluation runs no RandAugment), whichever is slower (retrieval: each caption with its negatives
    and an ITM pair; every test (image, text) pair scored). The bound named is training's. Each job's batch per update, as its GPUs x
    micro-batch x accumulated steps, and its optimiser updates are stated."""
    from absvit.vl.recipe import VLRecipe

    vl, g = inp.p["vl"], inp.gpus("vl")
    if g == 0:
        return Estimate([math.nan] * len(jobs), "not estimated: no throughput model for CPU V&L jobs (a previous run's "
                                                "gives one)")
    core, core_src = inp.loader.per_core("vl")
    secs, used, bounds = [], {}, {}
    for job in jobs:
        task, model = job["task"], vl["encoders"][job["encoder"]]["model"]
        r = VLRecipe.for_task(task, {**vl.get("recipe", {}), **vl.get(task, {})}, where=f"presets.{inp.preset}.vl.{task}")
        cores = loader_cores(inp, "vl", r.workers)
        step, source = inp.rates.step(model, r.img_size)
        rate = step * g / VL_OVERHEAD
        sizes = VL_SIZES[task]
        samples = sizes["train"] + (sizes["val"] if r.trainval else 0)
        if task == "vqa":  # val2014 is read twice when scored: the accuracy and its image-blind control
            passes = 1 if r.trainval else 2
            train, evaluated, eval_images = samples, passes * sizes["val"], passes * sizes["val"]
        else:
            train, evaluated, eval_images = samples * (r.negatives + 2), sizes["test_pairs"], sizes["test_images"]
        updates = r.epochs * (samples // r.batch_size)
        train_s, bounds[f"{task}/{job['encoder']}"] = bounded(r.epochs * train / rate, r.epochs * samples / (core * cores))
        eval_s, _ = bounded(evaluated / (EVAL_SPEEDUP * rate), eval_images / (core * cores))
        secs.append(train_s + eval_s)
        used[f"{task}/{model}"] = (f"{task} {model}: {r.epochs} x {train:,} pairs, batch {r.batch_size} per update "
                                   f"({g} GPUs x {r.micro_batch(g)} x {r.accum_steps} accumulated), {updates:,} updates, "
                                   f"{evaluated:,} evaluated [{source}]")
    return Estimate(secs, (f"epochs x max(training pairs / (step img/s x GPUs / {VL_OVERHEAD:g}), the samples' images / "
                           "(loader cores x img/s/core of the training transform)) + the same for the evaluated pairs "
                           f"at {EVAL_SPEEDUP:g} x the rate; published sizes; " + "; ".join(used.values())
                           + f"; loader [{core_src}]; {len(jobs)} job(s)"), verdict(bounds))


# The rules with a throughput model; any other rule is estimated from a previous run, or not at all.
MODELS = {"imagenet_c": estimate_shards, "pretrain": estimate_pretrain, "evaluate": estimate_evaluate,
          "segment": estimate_segment, "vl": estimate_vl}
