"""Exact nearest-neighbour search over embedding banks, with faiss or with torch.

Used where banks are large: decoding synthetic text embeddings into their nearest real
captions (the bank is every unique training caption: ~600k for COCO) and the greedy coreset
selections (each herding step is a 1-NN query over the candidate pool, built into an index
once). Both backends are exhaustive (flat index, no quantization), so they return the same
neighbours up to float32 rounding; the torch path checks the faiss one in the tests and runs
on the GPU when the tensors live there.

    index = NeighbourIndex(bank, metric="l2")     # built once ...
    index.search(queries, k, exclude=[...])        # ... searched many times
    knn(queries, bank, k, metric="cosine")         # both in one call
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UnknownNameError
from ..registry import Registry

METRICS = ("cosine", "l2")


@dataclass
class Neighbours:
    scores: torch.Tensor        # (q, k) cosine (descending) or squared L2 distance (ascending)
    indices: torch.Tensor       # (q, k) rows of the bank


# a backend builds a searcher from (bank (n, d), "cos" | "l2"); the searcher maps (queries (q, d),
# k, excluded rows or None) -> (scores, indices). For "cos" the queries arrive normalized and
# the backend normalizes the bank without keeping a second full copy of it.
Searcher = Callable[[torch.Tensor, int, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
Backend = Callable[[torch.Tensor, str], Searcher]
BACKENDS: Registry[Backend] = Registry("search backend")     # NeighbourIndex(..., backend=NAME)


class NeighbourIndex:
    """An exact k-NN index over the rows of `bank`.

    Args:
        bank: (n, d) vectors to search.
        metric: `cosine` (rows are L2-normalized; scores are cosines) or `l2` (squared
            Euclidean distances).
        backend: `faiss` (CPU, flat index) or `torch` (blocked matmul + top-k, any device).
    """

    def __init__(self, bank: torch.Tensor, metric: str = "cosine", backend: str = "faiss"):
        if metric not in METRICS:
            raise UnknownNameError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
        build = BACKENDS.get(backend)
        if bank.ndim != 2:
            raise ValueError(f"bank {tuple(bank.shape)} must be (n, d)")
        self.metric, self.n, self.dim = metric, len(bank), bank.shape[1]
        self._search = build(bank.detach().float(), "cos" if metric == "cosine" else "l2")

    def search(self, queries: torch.Tensor, k: int,
               exclude: Sequence[int] | torch.Tensor | None = None) -> Neighbours:
        """The k nearest rows for each query row (best first); `exclude`d rows never return."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries {tuple(queries.shape)} must be (q, {self.dim})")
        excluded = None
        if exclude is not None and len(exclude):
            excluded = torch.as_tensor(exclude, dtype=torch.long).unique()
        available = self.n - (0 if excluded is None else len(excluded))
        if not 0 < k <= available:
            raise ValueError(f"k={k} neighbours asked of a bank with {available} searchable rows")
        queries = queries.detach().float()
        if self.metric == "cosine":
            queries = F.normalize(queries, dim=-1)
        return Neighbours(*self._search(queries, k, excluded))


def knn(queries: torch.Tensor, bank: torch.Tensor, k: int, metric: str = "cosine",
        exclude: Sequence[int] | torch.Tensor | None = None, backend: str = "faiss") -> Neighbours:
    """The k nearest rows of `bank` for each query row: `NeighbourIndex(...).search(...)`."""
    return NeighbourIndex(bank, metric, backend).search(queries, k, exclude)


@BACKENDS.register("faiss")
def _faiss_index(bank: torch.Tensor, kind: str) -> Searcher:
    import faiss
    index = faiss.IndexFlatIP(bank.shape[1]) if kind == "cos" else faiss.IndexFlatL2(bank.shape[1])
    for rows in bank.split(2 ** 16):            # a COCO caption bank is GBs: no second full copy
        rows = F.normalize(rows, dim=-1) if kind == "cos" else rows
        index.add(rows.cpu().contiguous().numpy())

    def search(queries: torch.Tensor, k: int, excluded: torch.Tensor | None):
        # OpenMP start-up dominates small searches (and stalls on a busy machine): one thread there
        small = len(queries) * index.ntotal * index.d < 2 ** 24
        params = None
        if excluded is not None:
            # the inner selector must outlive the search: IDSelectorNot keeps only a pointer to it
            inner = faiss.IDSelectorBatch(excluded.cpu().numpy().astype(np.int64))
            params = faiss.SearchParameters(sel=faiss.IDSelectorNot(inner))
        with _omp_threads(faiss, 1 if small else torch.get_num_threads()):
            scores, indices = index.search(queries.cpu().contiguous().numpy(), k, params=params)
        return torch.from_numpy(scores), torch.from_numpy(indices).long()
    return search


@contextmanager
def _omp_threads(faiss, n: int) -> Iterator[None]:
    """faiss's OpenMP thread count for one search, then the previous one back.

    faiss and torch share the process's OpenMP runtime: a count set for faiss and left there
    would also be torch's (one small search used to leave every later training step on one
    thread).
    """
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


@BACKENDS.register("torch")
def _torch_index(bank: torch.Tensor, kind: str, max_entries: int = 2 ** 25) -> Searcher:
    """Scores blocks of queries against the whole bank; a block holds <= max_entries scores."""
    bank_sq = (bank * bank).sum(1)
    inverse_norm = 1.0 / bank_sq.sqrt().clamp(min=1e-12)            # cosine without a normalized copy
    block = max(1, max_entries // max(len(bank), 1))

    def search(queries: torch.Tensor, k: int, excluded: torch.Tensor | None):
        on = bank.to(queries.device)
        all_scores, all_indices = [], []
        for q in queries.split(block):
            dots = q @ on.t()                                            # (b, n)
            if kind == "cos":
                scores = dots * inverse_norm.to(q.device)
            else:                                       # top-k of the negated distances
                scores = -((q * q).sum(1, keepdim=True) - 2 * dots + bank_sq.to(q.device)).clamp_(min=0)
            if excluded is not None:
                scores[:, excluded.to(scores.device)] = float("-inf")
            top = scores.topk(k, dim=1)
            all_scores.append(top.values if kind == "cos" else -top.values)
            all_indices.append(top.indices)
        return torch.cat(all_scores).cpu(), torch.cat(all_indices).cpu()
    return search


__all__ = ["BACKENDS", "METRICS", "NeighbourIndex", "Neighbours", "knn"]
