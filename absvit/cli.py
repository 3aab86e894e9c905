"""``python -m absvit <verb>``: one verb per pipeline stage, each with explicit inputs and outputs."""
from __future__ import annotations

import argparse
import sys


def _models(args: argparse.Namespace) -> None:
    import timm

    import absvit  # noqa: F401  (registers the models)

    names = timm.list_models(args.filter)
    width = max(map(len, names), default=0)
    for name in names:
        m = timm.create_model(name)
        params = sum(p.numel() for p in m.parameters()) / 1e6
        print(f"{name:<{width}}  {params:8.2f}M params  input {tuple(m.pretrained_cfg['input_size'])}")


def _parse_sets(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _recipe(args: argparse.Namespace):
    import yaml

    from absvit.recipe import PretrainRecipe

    values = {}
    if args.recipe:
        values = yaml.safe_load(open(args.recipe)) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{args.recipe}: expected a mapping of recipe keys")
    values.update(_parse_sets(args.set))
    return PretrainRecipe.from_dict(values, where=args.recipe or "recipe")


def _data_embedded(args: argparse.Namespace) -> None:
    from absvit.data.synthetic import generate

    per_class = {k: int(v) for k, v in _parse_sets(args.per_class).items()}
    generate(args.out, seed=args.seed, size=args.size, per_class=per_class)


def _data_imagenet_c(args: argparse.Namespace) -> None:
    from absvit.data.imagenet_c import make_shard

    make_shard(args.src, args.out, args.corruption, args.severity, resize=args.resize, crop=args.crop,
               per_class=args.per_class, seed=args.seed)


def _pretrain(args: argparse.Namespace) -> None:
    from absvit.pretrain import pretrain

    pretrain(args.model, args.data, args.out, _recipe(args), tracking_uri=args.tracking_uri,
             track=not args.no_mlflow, run_name=args.run_name)


def _evaluate(args: argparse.Namespace) -> None:
    from absvit.evaluate import evaluate

    evaluate(args.model, args.checkpoint, args.suite, args.data, args.out, ema=args.ema, classes_spec=args.classes,
             img_size=args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation,
             batch_size=args.batch_size, workers=args.workers, tracking_uri=args.tracking_uri,
             track=not args.no_mlflow, run_name=args.run_name)


def _tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite under results/)")
    p.add_argument("--no-mlflow", action="store_true", help="write files only")
    p.add_argument("--run-name", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="absvit", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("models", help="list the registered AbSViT and embedded-size ViT models")
    p.add_argument("--filter", default="*absvit*", help="timm name pattern (default: %(default)s)")
    p.set_defaults(func=_models)

    data = verbs.add_parser("data", help="make datasets").add_subparsers(dest="what", required=True, metavar="WHAT")
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
    p.set_defaults(func=_data_imagenet_c)

    p = verbs.add_parser("pretrain", help="ImageNet-style pretraining; resumes from <out>/checkpoint.pth")
    p.add_argument("--model", required=True, help="timm name, e.g. absvit_small_patch16_224")
    p.add_argument("--data", required=True, help="root with train/<wnid>/ and val/<wnid>/")
    p.add_argument("--out", required=True)
    p.add_argument("--recipe", default=None, help="YAML mapping of recipe keys (defaults: the paper's recipe)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides")
    _tracking_args(p)
    p.set_defaults(func=_pretrain)

    from absvit.evaluate import SUITES

    p = verbs.add_parser("evaluate", help="one robustness suite for one checkpoint, to a JSON file")
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", required=True, help="absvit pretrain output or an official released file")
    p.add_argument("--suite", required=True, choices=SUITES)
    p.add_argument("--data", required=True, help="the suite's root folder")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights (model_ema)")
    p.add_argument("--classes", default=None, help="label space: 'imagenet-1k' or a train folder (default: from the checkpoint, else imagenet-1k)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.875)
    p.add_argument("--interpolation", default="bicubic")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=8)
    _tracking_args(p)
    p.set_defaults(func=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
