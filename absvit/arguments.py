"""Command-line argument groups that several verbs share (MLflow tracking, a job's place in the pipeline,
progress lines, a recipe), and ``KEY=VALUE`` parsing. Light: every verb's parser is built from it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from absvit.errors import UsageError

FRESH_HELP = ("if <out>/checkpoint.pth belongs to a different run (changed model, recipe, data, seed, world size), "
              "move it aside to <out>/stale-<time>/ and start fresh; without this flag such a resume is refused")


def tracking_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite under results/)")
    p.add_argument("--no-mlflow", action="store_true", help="write files only")
    p.add_argument("--run-name", default=None)


def progress_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-every", type=float, default=30.0, metavar="SECONDS",
                   help="a progress line about every SECONDS (default: %(default)s)")


def job_arguments(p: argparse.ArgumentParser) -> None:
    """A training / evaluation job's place in the pipeline (MLflow tags), its MLflow options and progress lines."""
    tracking_arguments(p)
    progress_arguments(p)
    p.add_argument("--preset", default=None, help="tag absvit.preset (default: adhoc)")
    p.add_argument("--run", default=None, help="tag absvit.run: the config's run / backbone name (default: the output folder's)")


def job_kwargs(args: argparse.Namespace) -> dict:
    """What ``job_arguments`` read, as the keyword arguments of a stage's function."""
    return dict(tracking_uri=args.tracking_uri, track=not args.no_mlflow, run_name=args.run_name, preset=args.preset,
                run=args.run, log_every_s=args.log_every)


def recipe_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--recipe", default=None, metavar="JSON|FILE",
                   help=f"the {what} recipe's keys: a JSON object, or a YAML / JSON file of them (default: the paper's recipe)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="recipe overrides (values read as JSON: 1e-5, true, 3; anything else is a string)")
    p.add_argument("--fresh-on-change", action="store_true", help=FRESH_HELP)


def value(text: str):
    """A command-line value: JSON where it parses (``1e-5``, ``true``, ``[1, 2]``), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def key_values(pairs: list[str], flag: str = "--set") -> dict:
    """``["a=1", "b=rand-m9"]`` -> ``{"a": 1, "b": "rand-m9"}``."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UsageError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key] = value(text)
    return out


def recipe_values(args: argparse.Namespace):
    """The recipe's keys from ``--recipe`` (a JSON object, or a YAML / JSON file) updated by ``--set``, and where
    each came from (``absvit.recipe.Where``, for error messages: ``--set lr``, ``<file>: lr``, ``recipe.lr``)."""
    from absvit.recipe import Where

    values, where = {}, Where("recipe")
    if args.recipe:
        text = args.recipe.strip()
        if text.startswith("{"):
            try:
                values = json.loads(text)
            except ValueError as e:
                raise UsageError(f"--recipe: not a JSON object ({e})") from None
        else:
            import yaml

            where = Where(args.recipe, template="{where}: {key}")
            try:
                values = yaml.safe_load(Path(args.recipe).read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise UsageError(f"--recipe {args.recipe}: cannot read it ({e})") from None
        if not isinstance(values, dict):
            raise UsageError(f"--recipe {args.recipe}: expected a mapping of recipe keys")
    overrides = key_values(args.set)
    where.by_key.update({k: "--set {key}" for k in overrides})
    return {**values, **overrides}, where
