"""absvit-bench: AbSViT (CVPR 2023) and the pipeline that regenerates its appendix tables.

``import absvit.models`` registers the models with timm (it imports timm)::

    import timm
    import absvit.models
    model = timm.create_model("absvit_base_patch16_224")

``import absvit`` itself imports neither torch nor timm, and registers nothing: the pipeline
starts a Python process per job, and most jobs (data shards, submit, tables) never build a
model, so they do not pay the seconds that importing timm takes. Every module that builds
models imports ``absvit.models``. ``absvit.AbSViT`` and the checkpoint functions below are
imported on first use (``absvit.AbSViT`` and ``absvit.load_checkpoint`` import, and so register,
the models).
"""
__version__ = "0.1.0"
__all__ = ["AbSViT", "CheckpointError", "load_checkpoint", "save_checkpoint"]


def __getattr__(name):
    if name == "AbSViT":
        from absvit.models import AbSViT

        return AbSViT
    if name in ("CheckpointError", "save_checkpoint"):
        from absvit import checkpoint

        return getattr(checkpoint, name)
    if name == "load_checkpoint":
        from absvit.models.weights import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'absvit' has no attribute {name!r}")
