"""absvit-bench: AbSViT (CVPR 2023) and the pipeline that regenerates its appendix tables."""
from absvit import models  # noqa: F401  (registers the models with timm)
from absvit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from absvit.models import AbSViT

__version__ = "0.1.0"
__all__ = ["AbSViT", "CheckpointError", "load_checkpoint", "save_checkpoint"]
