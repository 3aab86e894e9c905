"""What a run reads, by content: the part of a training job's identity that its input files make.

A resumed job must be the same run, so its identity (``absvit.checkpoint.checkpoint_to_resume``) holds a digest of
each input it loads rather than the input's path: a file rewritten at the same path (a rerun of pretraining, another
seed's weights, changed labels) is a changed input, and a project moved or copied elsewhere is not.

- ``file_digest``: the SHA-256 of a file's bytes (checkpoints, annotation and split files, a text encoder's files);
- ``tree_digest``: a folder's files in sorted order, each by name and size, and by its bytes too where it is a
  small text file (annotations, split lists, manifests) or where ``full`` is asked for. An image folder of
  ImageNet's size costs one ``stat`` per file.

Where a result records an input's path (to read it again, e.g. a V&L model's text encoder), ``recorded_path`` keeps
it relative to the project (the directory the job runs in: Snakemake's working directory), so that a results folder
can be moved or shared with its project.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20
TEXT_SUFFIXES = frozenset({".json", ".txt", ".csv", ".yaml", ".yml", ".tsv", ".lst"})  # hashed whole in a tree


def file_digest(path) -> str:
    """``sha256:<hex>`` of the file's bytes."""
    with open(path, "rb") as f:
        return f"sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"


def tree_digest(root, *, full: bool = False) -> str:
    """``tree:<hex>`` of every file under ``root``, in sorted order of their relative paths: each path and size, and
    the bytes of small text files (``TEXT_SUFFIXES``), or of every file with ``full``. Links are followed."""
    root = Path(root)
    entries = []
    for folder, _, names in os.walk(root, followlinks=True):
        for name in names:
            path = Path(folder) / name
            entries.append((path.relative_to(root).as_posix(), path))
    h = hashlib.sha256()
    for rel, path in sorted(entries):
        h.update(f"{rel}\0{path.stat().st_size}\0".encode())
        if full or path.suffix.lower() in TEXT_SUFFIXES:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
    return f"tree:{h.hexdigest()}"


def digest(path, *, full_tree: bool = False) -> str | None:
    """``file_digest`` of a file, ``tree_digest`` of a folder, None for None."""
    if path is None:
        return None
    path = Path(path)
    return tree_digest(path, full=full_tree) if path.is_dir() else file_digest(path)


def recorded_path(path) -> str | None:
    """``path`` as a result records it: relative to the current directory (the project, under Snakemake) where it
    lies inside it, else absolute; read it back relative to the project."""
    if path is None:
        return None
    path = Path(path).absolute()
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)
