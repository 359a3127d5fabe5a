"""Can batch norm normalise this batch? A shape check run before anything trains.

In training, a batch-norm layer (`model.batchnorm: batch`) normalises each channel over the
batch and the spatial positions: batch x H x W values. With fewer than two there is no variance
to divide by (PyTorch stops with "Expected more than 1 value per channel"); a deep tower at a
small image size reaches 1 x 1 before its last batch-norm layers, so a mini-batch of one -- a
last partial batch, a tiny set -- is enough. The spatial sizes come from one forward on the
meta device (shapes only, no memory, no arithmetic).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import UserError

MIN_VALUES = 2          # per channel: PyTorch's own minimum in training


def batchnorm_positions(model: nn.Module, image_size: int, text_dim: int) -> tuple[str, int] | None:
    """The batch-norm layer of `model` (a `DualEncoder`) that normalises over the fewest positions
    per sample in training, and that count (H x W; 1 for a flat input); None when no layer uses
    batch statistics (no batch norm, `model.batchnorm: frozen`, or a frozen backbone)."""
    trains = {m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.training and m.track_running_stats is not None}
    if not trains:
        return None
    meta = copy.deepcopy(model).to("meta")
    seen: list[tuple[str, int]] = []
    names = {id(m): n for n, m in model.named_modules()}
    hooks = []
    for original, clone in zip(model.modules(), meta.modules()):
        if original in trains:
            hooks.append(clone.register_forward_pre_hook(
                lambda mod, args, name=names[id(original)]: seen.append((name, args[0].shape[2:].numel()))))
    try:
        with torch.no_grad():
            meta(torch.empty(2, 3, image_size, image_size, device="meta"),
                 torch.empty(2, text_dim, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return min(seen, key=lambda s: s[1]) if seen else None


def batch_problems(smallest: tuple[str, int] | None, batches: dict[str, int]) -> dict[str, str]:
    """{key: why} for each (key, smallest training batch it makes) that the batch-norm layer
    `smallest` (from `batchnorm_positions`) cannot normalise."""
    if smallest is None:
        return {}
    layer, positions = smallest
    return {key: f"a training batch of {batch} reaches batch-norm layer {layer!r} at {positions} "
                 f"position(s) per channel ({batch * positions} value(s), fewer than {MIN_VALUES}): "
                 "raise it, use a larger data.image_size, or model.batchnorm=frozen"
            for key, batch in batches.items() if batch * positions < MIN_VALUES}


def check_batchnorm(model: nn.Module, image_size: int, text_dim: int, batches: dict[str, int]) -> None:
    """Refuse, naming the key, a batch size that batch norm cannot normalise."""
    for key, why in batch_problems(batchnorm_positions(model, image_size, text_dim), batches).items():
        raise UserError(f"{key}: {why}")


__all__ = ["MIN_VALUES", "batch_problems", "batchnorm_positions", "check_batchnorm"]
