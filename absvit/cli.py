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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="absvit", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("models", help="list the registered AbSViT and embedded-size ViT models")
    p.add_argument("--filter", default="*absvit*", help="timm name pattern (default: %(default)s)")
    p.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
