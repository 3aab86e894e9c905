"""Adversarial robustness as the official code measures it (``--fgsm_test`` / ``--pgd_test`` of its ``main.py``, the
RVT protocol): L-infinity attacks on the clean validation images in normalised-pixel space.

With the ImageNet mean / std, a per-channel budget ``epsilon = (1/255) / std``; after every step the image is
clamped to ``x +- epsilon`` and to the valid pixels ``[(0 - mean) / std, (1 - mean) / std]``. The loss is the
cross-entropy with the true label, its gradient taken in float32 with the model in eval mode; for AbSViT the
attacked function is the model's output (both passes and the feedback). Scored: top-1 on the adversarial images.

- FGSM: one step of ``(1/255) / std`` along the gradient's sign, from the image itself;
- PGD: five steps of ``(0.5/255) / std`` from a uniform random start in ``[-epsilon, epsilon]`` (per channel),
  drawn from a seeded generator, so that a rerun gives the same number.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PIXEL = 1 / 255


@dataclass(frozen=True)
class Attack:
    """An L-infinity attack of ``steps`` signed-gradient steps of ``step`` pixels within ``epsilon`` pixels (both
    in units of [0, 1] images, scaled per channel by 1 / std), from a random start or from the image."""

    steps: int
    step: float
    epsilon: float = PIXEL
    random_start: bool = False


ATTACKS = {"fgsm": Attack(steps=1, step=PIXEL), "pgd": Attack(steps=5, step=0.5 * PIXEL, random_start=True)}


def _per_channel(values, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def loss_gradient(model, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d cross-entropy(model(images), labels) / d images, in float32 (autocast off) whatever the caller's mode."""
    images = images.detach().float().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(images.device.type, enabled=False):
        loss = F.cross_entropy(model(images).float(), labels)
        (grad,) = torch.autograd.grad(loss, images)
    return grad


def perturb(model, images: torch.Tensor, labels: torch.Tensor, attack: Attack, *, mean, std,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial versions of normalised ``images`` (B, C, H, W) under ``attack``; ``mean`` / ``std``: the
    normalisation of the images (per channel); ``generator``: the random start's draws (on the images' device)."""
    std = _per_channel(std, images)
    mean = _per_channel(mean, images)
    epsilon, step = attack.epsilon / std, attack.step / std
    low, high = (0 - mean) / std, (1 - mean) / std
    original = images.detach().float()
    adversarial = original.clone()
    if attack.random_start:
        noise = torch.rand(original.shape, generator=generator, device=original.device, dtype=original.dtype)
        adversarial = torch.clamp(original + (2 * noise - 1) * epsilon, low, high)
    for _ in range(attack.steps):
        adversarial = adversarial + step * loss_gradient(model, adversarial, labels).sign()
        adversarial = torch.clamp(torch.minimum(torch.maximum(adversarial, original - epsilon), original + epsilon),
                                  low, high)
    return adversarial.detach()
