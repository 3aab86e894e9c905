"""What the pipeline checks of a preset's V&L stage before it builds the DAG, so that a bad input is one line at
``snakemake -n``, not a failure after hours of training (or after Snakemake has removed the last run's outputs):

- ``check_img_size``: the recipe's input size against each visual encoder's (from its pretraining recipe, or its
  timm name's ``patch<P>_<size>``);
- ``check_data``: each task's splits as the job will read them (``absvit.vl.records``: the annotation schema, the
  images named, a split too small to train on or empty to evaluate), remembered per file state in ``cache`` so that
  a large VQAv2 is read once, not at every ``snakemake`` call;
- the text encoder's folder: ``absvit.vl.encoders.check_text_encoder``.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from absvit.errors import UsageError


def name_input_size(model_name: str) -> int | None:
    """The input size a timm name states (``absvit_base_patch16_224`` -> 224), or None."""
    found = re.search(r"patch\d+_(\d+)", model_name)
    return int(found[1]) if found else None


def check_img_size(img_size: int, encoder_size: int | None, encoder: str, where: str) -> None:
    """``img_size`` (the V&L recipe's) must be the visual encoder's input size (its position embedding's grid)."""
    if encoder_size is not None and img_size != encoder_size:
        raise UsageError(f"{where}: {img_size} does not fit the visual encoder {encoder}, which takes "
                         f"{encoder_size}x{encoder_size} images; expected {encoder_size}")


def file_state(root: Path) -> list:
    """What decides whether a folder's splits must be read again: each JSON file's name, size and mtime."""
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(Path(root).glob("*.json"))]


def check_data(task: str, root, recipe, cache: Path) -> None:
    """``task``'s splits of ``root`` under ``recipe`` (``vqa_splits`` / ``retrieval_splits``); DatasetError naming
    the file and key. A pass is remembered in ``cache`` for the same files and recipe values."""
    from absvit.vl.records import retrieval_splits, vqa_splits

    keys = ("batch_size", "trainval", "min_answer_count")
    state = json.dumps([task, str(Path(root).resolve()), file_state(root), [getattr(recipe, k) for k in keys]])
    marker = Path(cache) / f"vl-data-{hashlib.sha256(state.encode()).hexdigest()[:24]}"
    if marker.exists():
        return
    (vqa_splits if task == "vqa" else retrieval_splits)(root, recipe)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(state)


def task_recipe(vl: dict, task: str, prefix: str):
    """A V&L task's recipe as its job makes it (``VLRecipe.for_task`` of the preset's ``vl.recipe`` under
    ``vl.<task>``), and where each key is set in config.yaml (``Where``: ``<prefix>.vl.recipe.<key>`` or
    ``<prefix>.vl.<task>.<key>``)."""
    from absvit.recipe import Where
    from absvit.vl.recipe import VLRecipe

    values, keys = Where.layered((f"{prefix}.vl.recipe", vl["recipe"]), (f"{prefix}.vl.{task}", vl.get(task, {})))
    return VLRecipe.for_task(task, values, where=keys), keys


def check_inputs(vl: dict, data: dict, prefix: str, cache: Path) -> None:
    """A configured V&L stage's text encoder folder and each task's splits (``data``: task -> folder), as its jobs
    will read them; the generated ones are made, and checked, by the jobs."""
    from absvit.vl.encoders import check_text_encoder

    if not isinstance(vl["text_encoder"], dict):
        check_text_encoder(vl["text_encoder"], where=f"{prefix}.vl.text_encoder")
    if "generate" not in vl["data"]:
        for task, root in data.items():
            check_data(task, root, task_recipe(vl, task, prefix)[0], cache)
