"""``python -m absvit <verb>``: one verb per pipeline stage, each with explicit inputs and outputs."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from absvit.arguments import job_arguments, job_kwargs, progress_arguments, recipe_arguments, tracking_arguments


def _models(args: argparse.Namespace) -> None:
    """One line per model: parameters, input size, released weights (timm tags).

    Models are built on the meta device: shapes without storage, so that all of timm's ViTs (up to
    7B parameters) are listed in seconds, in the memory importing torch takes. Weight initialisers
    only write values, which meta tensors do not have: they are skipped (under half the time); any
    other op runs.
    """
    import timm
    import torch
    from torch.overrides import TorchFunctionMode

    from absvit.errors import UsageError
    from absvit.models import absvit as absvit_models, baselines

    writes = {"uniform_", "normal_", "erfinv_", "clamp_", "mul_", "add_", "sub_", "div_", "fill_", "zero_", "copy_"}

    class SkipInit(TorchFunctionMode):
        def __torch_function__(self, func, types, fargs=(), kwargs=None):
            kwargs = kwargs or {}
            t = fargs[0] if fargs else kwargs.get("tensor")  # torch.nn.init passes it by name
            init = getattr(func, "__module__", None) == "torch.nn.init" or getattr(func, "__name__", None) in writes
            return t if init and isinstance(t, torch.Tensor) and t.is_meta else func(*fargs, **kwargs)

    ours = [*absvit_models.default_cfgs, *baselines.default_cfgs]
    names = timm.list_models(args.filter or ours)
    if not names:
        raise UsageError(f"no timm model matches {args.filter!r}")
    tags: dict[str, list[str]] = {}
    for tagged in timm.list_pretrained():
        name, _, tag = tagged.partition(".")
        tags.setdefault(name, []).append(tag)
    width = max(map(len, names))
    for name in names:
        with torch.device("meta"), SkipInit():
            m = timm.create_model(name)
        params = sum(p.numel() for p in m.parameters()) / 1e6
        weights = tags.get(name, ["none"])
        weights = weights[0] if len(weights) == 1 else f"{m.pretrained_cfg['tag']} (+{len(weights) - 1} more)"
        print(f"{name:<{width}}  {params:8.2f}M params  input {tuple(m.pretrained_cfg['input_size'])}  weights {weights}")


def _recipe(args: argparse.Namespace, recipe_class):
    """The verb's recipe from ``--recipe`` / ``--set``, made (and so checked, key by key) once."""
    from absvit.arguments import recipe_values

    values, where = recipe_values(args)
    return recipe_class.from_dict(values, where=where)


def _data_embedded(args: argparse.Namespace) -> None:
    from absvit.data.synthetic import generate

    from absvit.arguments import key_values

    per_class = {k: int(v) for k, v in key_values(args.per_class, "--per-class").items()}
    generate(args.out, seed=args.seed, size=args.size, per_class=per_class)


def _data_imagenet_c(args: argparse.Namespace) -> None:
    from absvit.data.imagenet_c import make_shard

    make_shard(args.src, args.out, args.corruption, args.severity, resize=args.resize, crop=args.crop,
               per_class=args.per_class, seed=args.seed, every_s=args.log_every)


def _data_segmentation(args: argparse.Namespace) -> None:
    from absvit.data.synthetic_seg import generate_segmentation

    from absvit.arguments import key_values

    per_split = {k: int(v) for k, v in key_values(args.per_split, "--per-split").items()}
    generate_segmentation(args.out, seed=args.seed, per_split=per_split, layouts=args.layouts)


def _segment(args: argparse.Namespace) -> None:
    from absvit.recipe import SegmentRecipe
    from absvit.segment import segment

    segment(args.backbone, args.model, args.dataset, args.data, args.out, _recipe(args, SegmentRecipe),
            checkpoint=args.checkpoint, ema=args.ema, fresh_on_change=args.fresh_on_change, **job_kwargs(args))


def _pretrain(args: argparse.Namespace) -> None:
    from absvit.pretrain import pretrain
    from absvit.recipe import PretrainRecipe

    pretrain(args.model, args.data, args.out, _recipe(args, PretrainRecipe), fresh_on_change=args.fresh_on_change,
             **job_kwargs(args))


def _evaluate(args: argparse.Namespace) -> None:
    from absvit.errors import UsageError
    from absvit.evaluate import evaluate_suites

    if not len(args.suite) == len(args.data) == len(args.out):
        raise UsageError(f"give one --data and one --out per --suite (got {len(args.suite)} suites, "
                         f"{len(args.data)} --data, {len(args.out)} --out)")
    evaluate_suites(args.model, args.checkpoint, list(zip(args.suite, args.data, args.out)), ema=args.ema,
                    classes_spec=args.classes, img_size=args.img_size, crop_pct=args.crop_pct,
                    interpolation=args.interpolation, batch_size=args.batch_size, workers=args.workers,
                    attack_seed=args.attack_seed, **job_kwargs(args))


def _ablation(args: argparse.Namespace) -> None:
    from absvit.ablation import COMPARISONS, summarize
    from absvit.errors import UsageError

    arms: dict = {}
    for spec in args.arm:  # one --arm per arm and seed
        arm, _, rest = spec.partition("=")
        run, _, eval_dir = rest.partition(":")
        if not (arm and run and eval_dir):
            raise UsageError(f"--arm expects ARM=RUN:EVAL_DIR, got {spec!r}")
        arms.setdefault(arm, []).append((run, Path(eval_dir)))
    expected = COMPARISONS[args.name]
    if sorted(arms) != sorted(expected):
        raise UsageError(f"--name {args.name}: give one --arm for each of {', '.join(expected)} (got {', '.join(arms)})")
    summarize(args.name, arms, args.out, label=args.label, preset=args.preset, tracking_uri=args.tracking_uri,
              track=not args.no_mlflow)


def _tables(args: argparse.Namespace) -> None:
    import pandas as pd

    from absvit import tables
    from absvit.figures.table import figure_scores
    from absvit.tracking import tracking_uri
    from absvit.vl import table as vl_table

    label = args.label
    if args.from_mlflow:
        uri = tracking_uri(args.tracking_uri)
        found = {name: tables.ablation_from_mlflow(uri, args.preset, name, required=False) for name in ("lvar", "robustness")}
        ablation, robustness = ((found[name] or (None,))[0] for name in ("lvar", "robustness"))
        label = next((f[1] for f in found.values() if f), label)
        segmentation = tables.segmentation_from_mlflow(uri, args.preset)
        vl = vl_table.vl_from_mlflow(uri, args.preset)
        if ablation is None and robustness is None and segmentation is None and vl is None:
            from absvit.errors import TrackingError

            raise TrackingError(f"no finished ablation, segmentation or V&L run for preset {args.preset!r} in the "
                                f"MLflow store {uri} (tags absvit.stage=ablation / segment / vl-*)")
    else:  # pandas 3 reads floats round-trip
        ablation = pd.read_csv(args.ablation) if args.ablation else None
        robustness = pd.read_csv(args.robustness) if args.robustness else None
        segmentation = tables.segmentation_frame(args.segmentation) if args.segmentation else None
        vl = vl_table.vl_frame(args.vl) if args.vl else None
    t1 = tables.table1(segmentation, args.out_dir, label=label) if segmentation is not None else None
    t2 = tables.table2(ablation, args.out_dir, label=label) if ablation is not None else None
    t3 = tables.table3(robustness, args.out_dir, label=label) if robustness is not None else None
    t4 = vl_table.table4(vl, args.out_dir, label=label) if vl is not None else None
    sections = [figure_scores(args.figures, args.out_dir, label=label)] if args.figures else []
    sections += [vl_table.figure5_scores(args.figure5, args.out_dir, label=label)] if args.figure5 else []
    sections += [Path(path).read_text() for path in args.section or ()]
    if args.bench_dir:  # what the run cost, per stage: Snakemake's benchmark files, sacct for SLURM jobs
        from absvit import cost

        bill = cost.cost_table(args.bench_dir, args.submitit_dir, args.launcher, gpus=cost.parse_gpus(args.gpus))
        sections.append(cost.cost_section(bill))
        cost.log_cost(bill, preset=args.preset, tracking_uri=args.tracking_uri, track=not args.no_mlflow,
                      artifacts=cost.write_cost(args.out_dir, bill), launcher=args.launcher)
    tables.report(args.out_dir, t1=t1, t2=t2, t3=t3, t4=t4, label=label, sections=sections)


def _released(args: argparse.Namespace) -> None:
    from absvit.arguments import key_values
    from absvit.released import released

    evals = {run: Path(folder) for run, folder in key_values(args.eval, "--eval").items()}
    released(evals, args.out_dir, preset=args.preset, label=args.label, tracking_uri=args.tracking_uri,
             track=not args.no_mlflow, from_mlflow=args.from_mlflow)


def _html(args: argparse.Namespace) -> None:
    from absvit.pages import write_pages

    for page in write_pages(args.markdown):
        print(page)


def _submit(args: argparse.Namespace) -> int:
    from absvit.launch import Resources, submit

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        from absvit.errors import UsageError

        raise UsageError("give the verb to run after '--', e.g. absvit submit -- pretrain --model ...")
    resources = Resources(timeout_min=args.timeout_min, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                          tasks_per_node=args.tasks_per_node,
                          cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, partition=args.partition,
                          constraint=args.constraint, account=args.account, qos=args.qos)
    return submit(argv, entry=main, launcher=args.launcher, folder=args.folder, resources=resources, name=args.name)


def build_parser() -> argparse.ArgumentParser:
    from absvit.figures import add_verbs as figures_verbs
    from absvit.vl import add_verbs as vl_verbs

    parser = argparse.ArgumentParser(prog="absvit", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("models", help="list this project's models (AbSViT, its ViT baselines): parameters, input, "
                         "released weights")
    p.add_argument("--filter", default=None, help="a timm name pattern, e.g. 'vit_*', over all of timm's models "
                   "(default: the models this project registers)")
    p.set_defaults(func=_models)

    data = verbs.add_parser("data", help="make datasets").add_subparsers(dest="what", required=True, metavar="WHAT")
    _data_verbs(data)
    _training_verbs(verbs)
    _table_verbs(verbs)
    _submit_verb(verbs)
    figures_verbs(verbs, data)  # the appendix figures' stage: `data embedded-scenes`, `decoder`, `figures`
    vl_verbs(verbs, data)  # V&L fine-tuning: `data embedded-vl`, `vl-vqa`, `vl-retrieval`, `vl-figure`
    return parser


def _data_verbs(data) -> None:
    """``data embedded``, ``data make-imagenet-c``, ``data embedded-segmentation``."""
    p = data.add_parser("embedded", help="the embedded default: ImageNet-layout shapes + A/R/Sketch-style trees")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--per-class", nargs="+", default=["train=300", "val=20", "imagenet-a=10", "imagenet-r=10", "imagenet-sketch=10"],
                   metavar="SPLIT=N", help="images per class for each split written (default: %(default)s)")
    p.set_defaults(func=_data_embedded)
    p = data.add_parser("make-imagenet-c", help="one ImageNet-C shard (corruption, severity) from a val folder")
    p.add_argument("--src", required=True, help="a val folder <src>/<wnid>/*.JPEG")
    p.add_argument("--out", required=True, help="ImageNet-C root; writes <out>/<corruption>/<severity>/")
    p.add_argument("--corruption", required=True)
    p.add_argument("--severity", type=int, required=True)
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--per-class", type=int, default=None, help="corrupt only the first N images of each class")
    p.add_argument("--seed", type=int, default=0)
    progress_arguments(p)
    p.set_defaults(func=_data_imagenet_c)

    p = data.add_parser("embedded-segmentation", help="the embedded default's VOC / Cityscapes / ADE20K-layout sets")
    p.add_argument("--out", required=True, help="writes <out>/voc/VOCdevkit/..., <out>/cityscapes/..., <out>/ade20k/...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-split", nargs="+", default=["train=120", "val=20"], metavar="SPLIT=N")
    p.add_argument("--layouts", nargs="+", default=["voc", "cityscapes", "ade20k"], choices=["voc", "cityscapes", "ade20k"])
    p.set_defaults(func=_data_segmentation)


def _training_verbs(verbs) -> None:
    """``pretrain``, ``evaluate``, ``segment``."""
    p = verbs.add_parser("pretrain", help="ImageNet-style pretraining; resumes from <out>/checkpoint.pth")
    p.add_argument("--model", required=True, help="timm name, e.g. absvit_small_patch16_224")
    p.add_argument("--data", required=True, help="root with train/<wnid>/ and val/<wnid>/")
    p.add_argument("--out", required=True)
    recipe_arguments(p, "pretraining")
    job_arguments(p)
    p.set_defaults(func=_pretrain)

    from absvit.data import SUITES

    p = verbs.add_parser("evaluate", help="robustness suites for one checkpoint, one JSON file each")
    p.add_argument("--model", default=None, help="timm name (default: the one the checkpoint records)")
    p.add_argument("--checkpoint", required=True, help="absvit pretrain output or an official released file")
    p.add_argument("--suite", required=True, nargs="+", choices=SUITES, help="one or more suites, evaluated in turn")
    p.add_argument("--data", required=True, nargs="+", help="each suite's root folder")
    p.add_argument("--out", required=True, nargs="+", help="each suite's result JSON")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights (model_ema)")
    p.add_argument("--classes", default=None, help="label space: 'imagenet-1k' or a train folder (default: from the checkpoint, else imagenet-1k)")
    p.add_argument("--img-size", type=int, default=None, help="default: the checkpoint's, else the model's (224)")
    p.add_argument("--crop-pct", type=float, default=0.875)
    p.add_argument("--interpolation", default="bicubic")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--attack-seed", type=int, default=0, help="PGD's random start (a rerun gives the same number)")
    job_arguments(p)
    p.set_defaults(func=_evaluate)

    p = verbs.add_parser("segment", help="UperNet fine-tuning + single-scale evaluation; resumes from <out>/checkpoint.pth")
    p.add_argument("--backbone", required=True, choices=["vit", "absvit", "resnet"])
    p.add_argument("--model", default=None, help="timm name, e.g. absvit_base_patch16_224 or resnet101 "
                   "(default: the one the --checkpoint records)")
    p.add_argument("--dataset", required=True, choices=["voc", "cityscapes", "ade20k"])
    p.add_argument("--data", required=True, help="the dataset's root (VOCdevkit's parent, Cityscapes root, ADEChallengeData2016's parent)")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", default=None, help="backbone weights: pretraining output / released file (ViT, AbSViT) "
                   "or timm ImageNet weights (ResNet); none: random init, said loudly")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    recipe_arguments(p, "segmentation")
    job_arguments(p)
    p.set_defaults(func=_segment)


def _table_verbs(verbs) -> None:
    """``ablation``, ``tables``, ``released``, ``html``, ``plan``."""
    p = verbs.add_parser("ablation", help="two arms' robustness results side by side: Table 2 (lvar) or Table 3 (robustness)")
    p.add_argument("--name", required=True, choices=["lvar", "robustness"],
                   help="lvar: arms without_lvar, with_lvar (Table 2); robustness: arms vit, absvit (Table 3)")
    p.add_argument("--arm", required=True, nargs="+", action="extend", metavar="ARM=RUN:EVAL_DIR",
                   help="an arm, its pretraining run and its eval folder (<suite>.json files of `absvit evaluate`); "
                        "repeat an arm once per seed")
    p.add_argument("--label", default="")
    p.add_argument("--preset", required=True)
    p.add_argument("--out", required=True, help="the comparison's CSV (lvar.csv, robustness.csv)")
    tracking_arguments(p)
    p.set_defaults(func=_ablation)

    p = verbs.add_parser("tables", help="Tables 1-3 as LaTeX / CSV / Markdown and the reproduction report")
    p.add_argument("--ablation", help="lvar.csv from `absvit ablation --name lvar` (Table 2)")
    p.add_argument("--robustness", help="robustness.csv from `absvit ablation --name robustness` (Table 3)")
    p.add_argument("--segmentation", nargs="+", help="`absvit segment` result.json files (one per backbone x dataset)")
    p.add_argument("--label", default="", help="a sentence added to the captions (the embedded default says so)")
    p.add_argument("--from-mlflow", action="store_true", help="read the numbers from the tracking store instead")
    p.add_argument("--preset", default="embedded", help="with --from-mlflow: which preset's runs; the cost run's tag")
    p.add_argument("--vl", nargs="+", metavar="JSON", help="`absvit vl-vqa` / `vl-retrieval` result.json files (Table 4)")
    p.add_argument("--figure5", nargs="+", metavar="CSV", help="`absvit vl-figure` fig5.csv files (one per seed)")
    p.add_argument("--section", nargs="+", metavar="MD", help="Markdown files appended to report.md (the released "
                   "files' table, released.md of `absvit released`)")
    p.add_argument("--figures", nargs="+", metavar="CSV",
                   help="`absvit figures` figures.csv files (one per seed): adds figures.{tex,csv,md} and a report section")
    p.add_argument("--bench-dir", help="Snakemake benchmark files of the run: adds cost.{csv,md,tex} and the report's cost section")
    p.add_argument("--submitit-dir", help="with --launcher slurm: submitit's job folders, whose jobs sacct prices")
    p.add_argument("--launcher", default="local", choices=("local", "slurm"))
    p.add_argument("--gpus", nargs="+", metavar="STAGE=N",
                   help="the GPUs each job of a stage requests: what its jobs run outside SLURM cost (default: none)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--no-mlflow", action="store_true", help="do not mirror the cost table into MLflow")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_tables)

    p = verbs.add_parser("released", help="the official release's files re-measured beside their published numbers")
    p.add_argument("--eval", nargs="+", default=[], metavar="RUN=EVAL_DIR",
                   help="each released file's run and its eval folder (<suite>.json files of `absvit evaluate`)")
    p.add_argument("--from-mlflow", action="store_true", help="read the numbers from the tracking store instead")
    p.add_argument("--label", default="", help="a sentence added to the caption")
    p.add_argument("--preset", default="released", help="the MLflow run's tag (with --from-mlflow: whose run)")
    p.add_argument("--out-dir", required=True, help="writes released.{tex,csv,md}")
    tracking_arguments(p)
    p.set_defaults(func=_released)

    p = verbs.add_parser("html", help="Markdown files as standalone HTML pages (X.md -> X.html beside it): "
                                      "what Snakemake's report shows inline")
    p.add_argument("markdown", nargs="+", metavar="MD", help="Markdown files (the tables' .md, report.md)")
    p.set_defaults(func=_html)

    from absvit import plan

    p = verbs.add_parser("plan", help="a preset's bill before launch: jobs, SLURM requests, expected GPU-hours and wall time")
    plan.add_arguments(p)
    p.set_defaults(func=plan.main)


def _submit_verb(verbs) -> None:
    p = verbs.add_parser("submit", help="run another verb through submitit (local process or SLURM job)")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local")
    p.add_argument("--folder", required=True, help="submitit folder for this job's logs and pickles")
    p.add_argument("--name", default="absvit")
    p.add_argument("--timeout-min", type=int, default=60)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--tasks-per-node", type=int, default=None,
                   help="processes per node (torch.distributed; default: one per GPU, one without GPUs)")
    p.add_argument("--cpus-per-task", type=int, default=2)
    p.add_argument("--mem-gb", type=float, default=4)
    for opt in ("partition", "constraint", "account", "qos"):
        p.add_argument(f"--{opt}", default=None)
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- VERB [ARGS]")
    p.set_defaults(func=_submit)


def main(argv: list[str] | None = None) -> int:
    from absvit import tracking
    from absvit.errors import CheckpointError, DatasetError, DiskFull, JobFailed, TrackingError, UsageError

    args = build_parser().parse_args(argv)
    tracking.COMMAND = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("ABSVIT_PEAK_MEMORY_FILE"):  # `make gpu-check`: the job's peak GPU memory, written at exit
        from absvit.runtime import write_peak_memory_at_exit

        write_peak_memory_at_exit(Path(os.environ["ABSVIT_PEAK_MEMORY_FILE"]))
    try:
        return int(args.func(args) or 0)
    except (CheckpointError, DatasetError, DiskFull, JobFailed, TrackingError, UsageError) as e:
        print(f"absvit {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
