"""Exact nearest-neighbour search over embedding banks, with faiss or with torch.

Used where banks are large: decoding synthetic text embeddings into their nearest real
captions (the bank is every unique training caption: ~600k for COCO) and the greedy coreset
selections (each herding or k-center step is a 1-NN query over the candidate pool). Both
backends are exhaustive (flat index, no quantization), so they return the same neighbours up
to float32 rounding; the torch path checks the faiss one in the tests and runs on the GPU
when the tensors live there.

    knn(queries, bank, k, metric="cosine")   # (q, k) cosines, highest first
    knn(queries, bank, k, metric="l2")       # (q, k) squared distances, lowest first
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UnknownNameError

METRICS = ("cosine", "l2")


@dataclass
class Neighbours:
    scores: torch.Tensor        # (q, k) cosine (descending) or squared L2 distance (ascending)
    indices: torch.Tensor       # (q, k) rows of the bank


# a backend: (queries (q, d), bank (n, d), k, "cos" | "l2", excluded rows or None) -> (scores, indices);
# for "cos" the queries come normalized and the backend normalizes the bank without copying it whole
Backend = Callable[[torch.Tensor, torch.Tensor, int, str, torch.Tensor | None],
                   tuple[torch.Tensor, torch.Tensor]]
_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str):
    """Decorator: a search function becomes `knn(..., backend=NAME)`."""
    def wrap(fn: Backend) -> Backend:
        _BACKENDS[name] = fn
        return fn
    return wrap


def list_backends() -> list[str]:
    return sorted(_BACKENDS)


def knn(queries: torch.Tensor, bank: torch.Tensor, k: int, metric: str = "cosine",
        exclude: Sequence[int] | torch.Tensor | None = None, backend: str = "faiss") -> Neighbours:
    """The k nearest rows of `bank` for each query row.

    Args:
        queries: (q, d) query vectors.
        bank: (n, d) vectors to search.
        k: neighbours per query (at most the number of rows left after `exclude`).
        metric: `cosine` (rows are L2-normalized first; scores are cosines) or `l2`
            (squared Euclidean distances).
        exclude: bank rows that may not be returned (e.g. the points a greedy selection
            already took).
        backend: `faiss` (CPU, flat index) or `torch` (chunked matmul + top-k, any device).

    Returns:
        `Neighbours` with (q, k) scores and indices, best first.
    """
    if metric not in METRICS:
        raise UnknownNameError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if backend not in _BACKENDS:
        raise UnknownNameError(f"unknown search backend {backend!r}; known: {', '.join(list_backends())}")
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and bank {tuple(bank.shape)} must be "
                         "(q, d) and (n, d)")
    excluded = None
    if exclude is not None and len(exclude):
        excluded = torch.as_tensor(exclude, dtype=torch.long).unique()
    available = len(bank) - (0 if excluded is None else len(excluded))
    if not 0 < k <= available:
        raise ValueError(f"k={k} neighbours asked of a bank with {available} searchable rows")
    queries, bank = queries.detach().float(), bank.detach().float()
    if metric == "cosine":
        queries = F.normalize(queries, dim=-1)
    scores, indices = _BACKENDS[backend](queries, bank, k, "cos" if metric == "cosine" else "l2",
                                         excluded)
    return Neighbours(scores, indices)


@register_backend("faiss")
def _faiss_search(queries: torch.Tensor, bank: torch.Tensor, k: int, kind: str,
                  excluded: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss
    # OpenMP start-up dominates small searches (and stalls on a busy machine): one thread there
    small = len(queries) * len(bank) * bank.shape[1] < 2 ** 24
    faiss.omp_set_num_threads(1 if small else torch.get_num_threads())
    index = faiss.IndexFlatIP(bank.shape[1]) if kind == "cos" else faiss.IndexFlatL2(bank.shape[1])
    for rows in bank.split(2 ** 16):            # a COCO caption bank is GBs: no second full copy
        rows = F.normalize(rows, dim=-1) if kind == "cos" else rows
        index.add(rows.cpu().contiguous().numpy())
    params = None
    if excluded is not None:
        # the inner selector must outlive the search: IDSelectorNot keeps only a pointer to it
        inner = faiss.IDSelectorBatch(excluded.cpu().numpy().astype(np.int64))
        params = faiss.SearchParameters(sel=faiss.IDSelectorNot(inner))
    scores, indices = index.search(queries.cpu().contiguous().numpy(), k, params=params)
    return torch.from_numpy(scores), torch.from_numpy(indices).long()


@register_backend("torch")
def _torch_search(queries: torch.Tensor, bank: torch.Tensor, k: int, kind: str,
                  excluded: torch.Tensor | None, max_entries: int = 2 ** 25
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Score blocks of queries against the whole bank; a block holds <= max_entries scores."""
    bank = bank.to(queries.device)
    bank_sq = (bank * bank).sum(1)
    inverse_norm = 1.0 / bank_sq.sqrt().clamp(min=1e-12)                # cosine without a normalized copy
    block = max(1, max_entries // max(len(bank), 1))
    all_scores, all_indices = [], []
    for q in queries.split(block):
        dots = q @ bank.t()                                              # (b, n)
        if kind == "cos":
            scores = dots * inverse_norm
        else:                                           # top-k of the negated distances
            scores = -((q * q).sum(1, keepdim=True) - 2 * dots + bank_sq).clamp_(min=0)
        if excluded is not None:
            scores[:, excluded.to(scores.device)] = float("-inf")
        top = scores.topk(k, dim=1)
        all_scores.append(top.values if kind == "cos" else -top.values)
        all_indices.append(top.indices)
    return torch.cat(all_scores).cpu(), torch.cat(all_indices).cpu()


__all__ = ["METRICS", "Neighbours", "knn", "list_backends", "register_backend"]
