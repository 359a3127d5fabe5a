"""Learned similarity between synthetic pairs: the soft targets of LoRS.

- `lowrank` (LoRS): S = diag(w) + (alpha / r) L R^T with w = 1, L ~ N(0, 1), R = 0 at init.
  O(N r) parameters; a mini-batch I uses S_I = diag(w_I) + (alpha / r) L_I R_I^T and never
  forms the N x N matrix, so memory and time per batch do not depend on N.
- `full`: an N x N parameter, initialized to I.
- `identity`: S = I, fixed (the VL-distill baseline).

`build_similarity(kind, n, rank, alpha)` returns a module with `.params(indices)` (the
tensors a batch touches) and `.matrix(indices)` (the (b, b) block; the whole matrix when
indices is None). Gradients of `matrix(I)` reach only the rows of I.

Add a kind with `@SIMILARITIES.register("name")` on `fn(n, rank, alpha) -> Similarity`; one
with settings of its own registers their dataclass (`register("name", options=MyOptions)`):
they come from `distill.sim_args.name` as keyword arguments, `fn(n, rank, alpha, **options)`,
and the set's card records them so the set loads back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ..registry import Registry

if TYPE_CHECKING:
    from ..config import DistillConfig


class Similarity(nn.Module):
    kind = ""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.options: dict[str, Any] = {}      # its registered options, as built (set cards record them)

    def params(self, indices: torch.Tensor | None = None) -> list[torch.Tensor]:
        raise NotImplementedError

    def matrix_from(self, params: list[torch.Tensor], b: int) -> torch.Tensor:
        """The (b, b) matrix built from `params(indices)` (or leaf copies of them)."""
        raise NotImplementedError

    def matrix(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        b = self.n if indices is None else len(indices)
        return self.matrix_from(self.params(indices), b)

    def add_grad(self, indices: torch.Tensor, grads: list[torch.Tensor]) -> None:
        """Accumulate gradients w.r.t. `params(indices)` into the rows of indices only."""
        for param, grad in zip(self.parameters(), grads):
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            param.grad.index_add_(0, indices, grad)


class LowRankSimilarity(Similarity):
    kind = "lowrank"

    def __init__(self, n: int, rank: int, alpha: float):
        super().__init__(n)
        self.rank, self.alpha = rank, alpha
        self.diag = nn.Parameter(torch.ones(n))
        self.left = nn.Parameter(torch.randn(n, rank))
        self.right = nn.Parameter(torch.zeros(n, rank))

    def params(self, indices: torch.Tensor | None = None) -> list[torch.Tensor]:
        if indices is None:
            return [self.diag, self.left, self.right]
        return [self.diag[indices], self.left[indices], self.right[indices]]

    def matrix_from(self, params: list[torch.Tensor], b: int) -> torch.Tensor:
        w, left, right = params
        return torch.diag(w) + (self.alpha / self.rank) * left @ right.t()     # (b, b)


class FullSimilarity(Similarity):
    kind = "full"

    def __init__(self, n: int):
        super().__init__(n)
        self.weight = nn.Parameter(torch.eye(n))

    def params(self, indices: torch.Tensor | None = None) -> list[torch.Tensor]:
        if indices is None:
            return [self.weight]
        return [self.weight[indices[:, None], indices]]

    def matrix_from(self, params: list[torch.Tensor], b: int) -> torch.Tensor:
        return params[0]

    def add_grad(self, indices: torch.Tensor, grads: list[torch.Tensor]) -> None:
        if self.weight.grad is None:
            self.weight.grad = torch.zeros_like(self.weight)
        self.weight.grad.index_put_((indices[:, None], indices), grads[0], accumulate=True)


class IdentitySimilarity(Similarity):
    kind = "identity"

    def params(self, indices: torch.Tensor | None = None) -> list[torch.Tensor]:
        return []

    def matrix_from(self, params: list[torch.Tensor], b: int) -> torch.Tensor:
        return torch.eye(b)


SIMILARITIES: Registry[Callable[..., Similarity]] = Registry("similarity")
SIMILARITIES.add("lowrank", lambda n, rank, alpha: LowRankSimilarity(n, rank, alpha))
SIMILARITIES.add("full", lambda n, rank, alpha: FullSimilarity(n))
SIMILARITIES.add("identity", lambda n, rank, alpha: IdentitySimilarity(n))


def build_similarity(kind: str, n: int, rank: int = 10, alpha: float = 1.0, **options) -> Similarity:
    """A similarity over n synthetic pairs: `lowrank` (rank, alpha), `full` or `identity`, or any
    registered kind with its own options (checked, defaults filled in)."""
    build = SIMILARITIES.get(kind)
    values = SIMILARITIES.options(kind, options, f"distill.sim_args.{kind}")
    sim = build(n, rank, alpha, **values)
    sim.options = values
    return sim


def configured_similarity(d: "DistillConfig") -> Similarity:
    """The similarity distill.* asks for: sim_kind over n_pairs, with rank and alpha, and the
    kind's own options (distill.sim_args.KIND)."""
    return build_similarity(d.sim_kind, d.n_pairs, d.rank, d.alpha, **d.sim_args.get(d.sim_kind, {}))


def similarity_from_state(kind: str, n: int, state: dict[str, torch.Tensor], rank: int = 10,
                          alpha: float = 1.0, **options) -> Similarity:
    """Rebuild a similarity over n pairs from its saved parameters (`state_dict` names)."""
    sim = build_similarity(kind, n, rank=rank, alpha=alpha, **options)
    sim.load_state_dict(state)
    return sim
