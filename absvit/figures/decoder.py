"""The appendix Fig. 4 decoder: one linear map from a first-layer token to its patch's pixels.

The appendix trains "a linear decoder that projects the bottom-up input x0_bu of the first layer to
the original image" and then decodes x0_bu, the top-down signal x0_td and x0_bu + x0_td. Here x0_bu
is what the first block's attention values receive bottom-up (its layer-normed input) and x0_td the
signal pass 2 adds there (``AbSViT.first_layer_inputs``), so the sum is what the values see.

Training is MSE regression of each patch's normalised pixels (the model's input, ``C * p * p``
values) on its token, with the backbone frozen, over the pretraining (train) images. A linear map's
MSE optimum is the least-squares solution, so it is computed exactly instead of by gradient descent:
the Gram matrix ``X^T X`` and ``X^T Y`` (X: tokens with a constant 1 for the bias, Y: patch pixels)
are accumulated over batches and ``(X^T X + ridge * mean(diag) I) W = X^T Y`` is solved once. The
small ridge only guards against a singular Gram matrix. Cheap on a CPU: one forward of the
embedding and first norm per image.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from absvit.io import atomic_path
from absvit.models import vit_first_layer_input

RIDGE = 1e-4


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C * p * p), patches in row-major order (the token order)."""
    return F.unfold(images, kernel_size=patch, stride=patch).transpose(1, 2)


def unpatchify(patches: torch.Tensor, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``patchify`` for a (rows, cols) patch grid."""
    size = (grid[0] * patch, grid[1] * patch)
    return F.fold(patches.transpose(1, 2), output_size=size, kernel_size=patch, stride=patch)


def patch_tokens(model, tokens: torch.Tensor) -> torch.Tensor:
    """Drop the class (prefix) tokens."""
    return tokens[:, model.num_prefix_tokens:]


class LinearDecoder:
    """``pixels = tokens @ weight.T + bias`` per patch; images come out normalised like the model's input."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, *, patch_size: int, model: str = "",
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), meta: dict | None = None):
        self.weight, self.bias, self.patch_size, self.model = weight.float(), bias.float(), patch_size, model
        self.mean, self.std, self.meta = tuple(mean), tuple(std), dict(meta or {})

    def decode(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch tokens (B, rows * cols, D) -> normalised images (B, C, rows * p, cols * p)."""
        return unpatchify(tokens.float() @ self.weight.T + self.bias, self.patch_size, grid)

    def to_rgb(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> RGB in [0, 1] (for display)."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0, 1)

    def save(self, path) -> None:
        with atomic_path(path) as tmp:
            torch.save({"weight": self.weight, "bias": self.bias, "model": self.model, "patch_size": self.patch_size,
                        "mean": list(self.mean), "std": list(self.std), "meta": self.meta}, tmp)

    @classmethod
    def load(cls, path) -> "LinearDecoder":
        from absvit.errors import CheckpointError

        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            return cls(d["weight"], d["bias"], patch_size=int(d["patch_size"]), model=d["model"], mean=d["mean"],
                       std=d["std"], meta=d.get("meta"))
        except (OSError, RuntimeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: not a decoder file of `absvit decoder` ({type(e).__name__}: {e})") from None


def first_layer_tokens(model, images: torch.Tensor) -> torch.Tensor:
    """x0_bu patch tokens of any ViT: the first block's layer-normed input (AbSViT: ``first_layer_inputs``)."""
    if hasattr(model, "first_layer_inputs"):
        return patch_tokens(model, model.first_layer_inputs(images, top_down=False)[0])
    return patch_tokens(model, vit_first_layer_input(model, images))


@torch.no_grad()
def fit(model, batches, *, ridge: float = RIDGE, patch_size: int, model_name: str = "",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> LinearDecoder:
    """Least-squares (exact MSE) decoder from ``batches`` of normalised images (B, C, H, W); model frozen."""
    model.eval()
    gram = cross = None
    count, sq = 0, 0.0
    for images in batches:
        x = first_layer_tokens(model, images).reshape(-1, model.embed_dim).double()
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        y = patchify(images, patch_size).reshape(len(x), -1).double()
        gram = x.T @ x if gram is None else gram + x.T @ x
        cross = x.T @ y if cross is None else cross + x.T @ y
        count, sq = count + len(images), sq + float((y ** 2).sum())
    if gram is None:
        raise ValueError("no images to fit the decoder on")
    reg = ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    w = torch.linalg.solve(gram + reg, cross)  # (D + 1, C p p)
    # training MSE from the accumulated moments: (sum y^2 - 2 tr(W^T X^T Y) + tr(W^T X^T X W)) / n
    n_values = count * model.patch_embed.num_patches * cross.shape[1]
    mse = (sq - 2 * float((w * cross).sum()) + float((w * (gram @ w)).sum())) / n_values
    return LinearDecoder(w[:-1].T.float(), w[-1].float(), patch_size=patch_size, model=model_name, mean=mean, std=std,
                         meta={"images": count, "train_mse": mse, "ridge": ridge})


def train_decoder(checkpoint, data, out, *, model_name: str | None = None, max_images: int | None = 1000,
                  batch_size: int = 128, workers: int = 0, seed: int = 0) -> LinearDecoder:
    """``absvit decoder``: fit on up to ``max_images`` images of the train folder ``data`` (a fixed random subset)."""
    from timm.data import create_transform

    from absvit.data.readers import ClassFolder
    from absvit.evaluate import load_model

    start = time.time()
    model, classes, img_size, _ = load_model(checkpoint, model_name=model_name)
    cfg = model.pretrained_cfg
    tf = create_transform(img_size, is_training=False, crop_pct=1.0, interpolation="bicubic",
                          mean=cfg["mean"], std=cfg["std"])
    dataset = ClassFolder(data, classes, tf, subset=True)
    indices = list(range(len(dataset)))
    if max_images and max_images < len(dataset):
        indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:max_images].tolist()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         num_workers=workers)
    decoder = fit(model, (images for images, _ in loader), patch_size=model.patch_embed.patch_size[0],
                  model_name=cfg["architecture"], mean=cfg["mean"], std=cfg["std"])
    decoder.meta.update(checkpoint=str(checkpoint), data=str(data), img_size=img_size, seconds=time.time() - start)
    decoder.save(out)
    print(f"decoder: {decoder.meta['images']} images, train MSE {decoder.meta['train_mse']:.4f} (normalised pixels), "
          f"{decoder.meta['seconds']:.1f} s -> {out}")
    return decoder

