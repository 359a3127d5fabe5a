"""Contrastive losses with a soft target matrix, by name.

`soft_contrastive_loss(logits, target, kind, eps)` with logits Z and targets S both (b, b):
row i of Z scores image i against every text of the batch. With S = I, `infonce` is CLIP's
loss. With eps = 0 (vldistill's default) every loss is finite for any finite logits and any
finite target (also S outside [0, 1], which learned similarities reach): log-probabilities
come from log_softmax / logsigmoid. eps > 0 reproduces the LoRS code's WBCE, which takes
log(p + eps) and log(1 - p + eps) with p = sigmoid(Z) and divides by counts + eps; the two
differ once |Z| passes about 8 (fidelity: reference sets eps = 1e-6).

Add a loss with `@LOSSES.register("name")` on `fn(logits, target, eps) -> scalar`.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..registry import Registry

Loss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]     # (logits, target, eps)
LOSSES: Registry[Loss] = Registry("loss")

KL_TARGET_SHARPNESS = 10.0      # the reference turns a similarity row into softmax(10 * S)


def _both_directions(row_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Loss:
    """Average a row-wise loss over image->text rows and text->image columns."""
    def loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
        return 0.5 * (row_loss(logits, target) + row_loss(logits.t(), target.t()))
    loss.__doc__ = row_loss.__doc__
    return loss


@LOSSES.register("ence")
@LOSSES.register("infonce")
@_both_directions
def infonce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-sum_j S_ij log softmax(Z)_ij, mean over rows (the paper's eNCE)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@LOSSES.register("cwcl")
@_both_directions
def cwcl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Continuously weighted contrastive loss: infonce with each target row divided by its sum."""
    row_sum = target.sum(dim=1, keepdim=True) + 1e-6
    # a learned S can have a row summing to about -1e-6: keep |denominator| >= 1e-6, not 0 / 0
    row_sum = torch.where(row_sum.abs() < 1e-6, torch.full_like(row_sum, 1e-6), row_sum)
    weights = target / row_sum
    return -(weights * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@LOSSES.register("kl")
@_both_directions
def kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(softmax(10 S) || softmax(Z)), averaged over all entries (as the reference)."""
    log_q = F.log_softmax(logits, dim=1)
    log_p = F.log_softmax(KL_TARGET_SHARPNESS * target, dim=1)
    return (log_p.exp() * (log_p - log_q)).mean()


def _bce_matrix(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise -S log sigmoid(Z) - (1 - S) log(1 - sigmoid(Z)), stable for any Z and S."""
    return -(target * F.logsigmoid(logits) + (1.0 - target) * F.logsigmoid(-logits))


@LOSSES.register("bce")
def bce(logits: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Mean binary cross-entropy between sigmoid(Z) and S."""
    return _bce_matrix(logits, target).mean()


def _bce_matrix_eps(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """The LoRS code's form: -S log(p + eps) - (1 - S) log(1 - p + eps), p = sigmoid(Z)."""
    p = torch.sigmoid(logits)
    return -(target * torch.log(p + eps) + (1.0 - target) * torch.log(1.0 - p + eps))


@LOSSES.register("wbce")
def wbce(logits: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """BCE averaged separately over positives (S > 0.5) and negatives, then the two means averaged.

    eps = 0: exact log-sigmoid, empty halves count as 0. eps > 0: the reference's log(p + eps)
    and sums divided by count + eps.
    """
    per_entry = _bce_matrix_eps(logits, target, eps) if eps > 0 else _bce_matrix(logits, target)
    positive = (target > 0.5).detach()
    n_pos, n_neg = positive.sum().to(per_entry.dtype), (~positive).sum().to(per_entry.dtype)
    if eps > 0:
        n_pos, n_neg = n_pos + eps, n_neg + eps
    else:
        n_pos, n_neg = n_pos.clamp(min=1), n_neg.clamp(min=1)
    return 0.5 * (per_entry[positive].sum() / n_pos + per_entry[~positive].sum() / n_neg)


@LOSSES.register("mse")
def mse(logits: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Mean squared error between sigmoid(Z) and S."""
    return F.mse_loss(torch.sigmoid(logits), target)


def soft_contrastive_loss(logits: torch.Tensor, target: torch.Tensor, kind: str,
                          eps: float = 0.0) -> torch.Tensor:
    """Contrastive loss of (b, b) logits against a (b, b) soft target, by name (see LOSSES)."""
    loss = LOSSES.get(kind)
    if logits.shape != target.shape or logits.dim() != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must be "
                         "the same (b, b) shape")
    return loss(logits, target.to(logits.dtype), eps)
