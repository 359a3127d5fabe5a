"""Contrastive losses with a soft target matrix, by name.

`soft_contrastive_loss(logits, target, kind)` with logits Z and targets S both (b, b):
row i of Z scores image i against every text of the batch. With S = I, `infonce` is CLIP's
loss. Every loss is finite for any finite logits and any finite target (also S outside
[0, 1], which learned similarities reach): log-probabilities come from log_softmax /
logsigmoid, never from log(p + eps).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .errors import UnknownNameError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

KL_TARGET_SHARPNESS = 10.0      # the reference turns a similarity row into softmax(10 * S)


def _both_directions(row_loss: Loss) -> Loss:
    """Average a row-wise loss over image->text rows and text->image columns."""
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * (row_loss(logits, target) + row_loss(logits.t(), target.t()))
    loss.__doc__ = row_loss.__doc__
    return loss


@_both_directions
def infonce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-sum_j S_ij log softmax(Z)_ij, mean over rows (the paper's eNCE)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@_both_directions
def cwcl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Continuously weighted contrastive loss: infonce with each target row divided by its sum."""
    row_sum = target.sum(dim=1, keepdim=True) + 1e-6
    # a learned S can have a row summing to about -1e-6: keep |denominator| >= 1e-6, not 0 / 0
    row_sum = torch.where(row_sum.abs() < 1e-6, torch.full_like(row_sum, 1e-6), row_sum)
    weights = target / row_sum
    return -(weights * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@_both_directions
def kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(softmax(10 S) || softmax(Z)), averaged over all entries (as the reference)."""
    log_q = F.log_softmax(logits, dim=1)
    log_p = F.log_softmax(KL_TARGET_SHARPNESS * target, dim=1)
    return (log_p.exp() * (log_p - log_q)).mean()


def _bce_matrix(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise -S log sigmoid(Z) - (1 - S) log(1 - sigmoid(Z)), stable for any Z and S."""
    return -(target * F.logsigmoid(logits) + (1.0 - target) * F.logsigmoid(-logits))


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy between sigmoid(Z) and S."""
    return _bce_matrix(logits, target).mean()


def wbce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE averaged separately over positives (S > 0.5) and negatives, then the two means averaged."""
    per_entry = _bce_matrix(logits, target)
    positive = (target > 0.5).detach()
    pos_mean = per_entry[positive].sum() / positive.sum().clamp(min=1)
    neg_mean = per_entry[~positive].sum() / (~positive).sum().clamp(min=1)
    return 0.5 * (pos_mean + neg_mean)


def mse(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between sigmoid(Z) and S."""
    return F.mse_loss(torch.sigmoid(logits), target)


LOSSES: dict[str, Loss] = {
    "infonce": infonce, "ence": infonce, "cwcl": cwcl, "kl": kl,
    "bce": bce, "wbce": wbce, "mse": mse,
}


def soft_contrastive_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Contrastive loss of (b, b) logits against a (b, b) soft target, by name (see LOSSES)."""
    if kind not in LOSSES:
        raise UnknownNameError(f"unknown loss {kind!r}; known: {', '.join(sorted(LOSSES))}")
    if logits.shape != target.shape or logits.dim() != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must be "
                         "the same (b, b) shape")
    return LOSSES[kind](logits, target.to(logits.dtype))
