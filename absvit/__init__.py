"""absvit-bench: AbSViT (CVPR 2023) and the pipeline that regenerates its appendix tables.

Importing ``absvit`` registers the AbSViT models with timm, so that
``import absvit, timm; timm.create_model("absvit_base_patch16_224")`` works in either order.
Importing timm costs seconds (torch, torchvision), and the pipeline starts a Python process
per job, most of which (data shards, submit, tables) never build a model: so the
registration runs when timm itself is imported, not before.
"""
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"
__all__ = ["AbSViT", "CheckpointError", "load_checkpoint", "save_checkpoint"]


class _RegisterOnTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps timm's loader so that absvit.models runs right after timm."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None:
            return None
        exec_timm = spec.loader.exec_module

        def exec_module(module):
            exec_timm(module)
            importlib.import_module("absvit.models")

        spec.loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    from absvit import models  # noqa: F401
else:
    sys.meta_path.insert(0, _RegisterOnTimmImport())


def __getattr__(name):  # the model and checkpoint API, imported on first use
    if name == "AbSViT":
        from absvit.models import AbSViT

        return AbSViT
    if name in ("CheckpointError", "load_checkpoint", "save_checkpoint"):
        from absvit import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'absvit' has no attribute {name!r}")
