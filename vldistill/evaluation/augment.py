"""Augmentations applied to a set's images while an evaluation student trains on them.

Towers differ in what they need: a ConvNet trained on 100 pairs for 100 epochs overfits
without any, a pretrained ResNet or ViT usually wants flips and shifts. So augmentation is a
per-tower evaluation setting (`eval.augment`, `eval.towers.NAME.augment`), applied to the
normalized synthetic (or coreset) images batch by batch, each image drawn independently.

Register another with `@AUGMENTATIONS.register("name")` on `fn(images, generator) -> images`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..registry import Registry

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")


def augment(images: torch.Tensor, name: str, generator: torch.Generator) -> torch.Tensor:
    """(b, 3, H, W) -> (b, 3, H, W) augmented by the named augmentation (draws from generator)."""
    return AUGMENTATIONS.get(name)(images, generator)


def _draw(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator).to(device)


@AUGMENTATIONS.register("none")
def _none(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images


@AUGMENTATIONS.register("flip")
def _flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip of each image with probability 1/2."""
    flip = _draw(len(images), generator, images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


@AUGMENTATIONS.register("flip_crop")
def _flip_crop(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip, then shift each image by up to 1/8 of its side (reflect-padded, cropped back)."""
    images = _flip(images, generator)
    b, _, h, w = images.shape
    pad = max(1, min(h, w) // 8)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = (_draw(b, generator, images.device) * (2 * pad + 1)).long()
    dx = (_draw(b, generator, images.device) * (2 * pad + 1)).long()
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]       # (b, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]       # (b, 1, w)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


__all__ = ["AUGMENTATIONS", "augment"]
