"""The matching workload the cost and memory benchmarks share: one student, a synthetic set,
an expert start and target, and three ways to spend T steps on it.

- `plain_steps`: T ordinary training steps of the student module (forward, backward, SGD) on
  the same mini-batches; the unit the other two are measured in.
- `tesla_iteration`: one iteration of `vldistill.algorithms.matching.tesla_match` (the code distill runs).
- `unrolled_iteration`: the MTT / VL-distill form: the T steps are unrolled with their whole
  graph kept (no stop-gradient on phi_t) and one backward runs at the end; memory grows with T.

Contents of the set do not change the cost, so images and text embeddings are random
(text embeddings at MiniLM's scale); the tower is the registry's, built as distill builds it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vldistill.algorithms.losses import soft_contrastive_loss  # noqa: E402
from vldistill.algorithms.matching import MatchOptions, sample_batches, tesla_match, unroll_match  # noqa: E402
from vldistill.models.image_towers import create_image_tower  # noqa: E402
from vldistill.models.student import DualEncoder, FunctionalStudent  # noqa: E402
from vldistill.algorithms.similarity import Similarity, build_similarity  # noqa: E402

TEXT_DIM = 384              # all-MiniLM-L6-v2, the default text tower


@dataclass
class Workload:
    """Everything one matching iteration reads."""

    student: FunctionalStudent
    images: torch.Tensor            # (N, 3, H, W) leaf
    texts: torch.Tensor             # (N, TEXT_DIM) leaf
    similarity: Similarity
    start: tuple[torch.Tensor, torch.Tensor]
    target: tuple[torch.Tensor, torch.Tensor]
    mini_batch: int
    loss: str = "infonce"
    lr: float = 0.01

    @property
    def device(self) -> torch.device:
        return self.images.device

    def batches(self, steps: int, seed: int = 0) -> list[torch.Tensor]:
        batches = sample_batches(len(self.images), self.mini_batch, steps,
                                 torch.Generator().manual_seed(seed))
        return [b.to(self.device) for b in batches]

    def resident_bytes(self) -> int:
        """Tensors alive between iterations: student, expert start and target, set, their grads."""
        tensors = [*self.student.model.parameters(), *self.start, *self.target, self.images,
                   self.texts, *self.similarity.parameters()]
        tensors += [t.grad for t in tensors if t.grad is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def zero_grad(self) -> None:
        for t in (self.images, self.texts, *self.similarity.parameters()):
            t.grad = None


def make_workload(tower: str, image_size: int, n_pairs: int, mini_batch: int,
                  device: torch.device | str = "cpu", sim_kind: str = "lowrank", rank: int = 10,
                  alpha: float = 3.0, seed: int = 0, **tower_kwargs) -> Workload:
    """A student with `tower` and a random synthetic set of n_pairs at image_size."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = DualEncoder(create_image_tower(tower, image_size, **tower_kwargs), TEXT_DIM).to(device)
    student = FunctionalStudent(model)
    images = torch.randn(n_pairs, 3, image_size, image_size, device=device).requires_grad_(True)
    texts = (0.05 * torch.randn(n_pairs, TEXT_DIM, device=device)).requires_grad_(True)
    similarity = build_similarity(sim_kind, n_pairs, rank, alpha).to(device)
    start = student.flat_params()
    target = tuple(p + 1e-3 * torch.randn_like(p) for p in start)
    return Workload(student, images, texts, similarity, start, target, mini_batch)


def plain_steps(w: Workload, batches: list[torch.Tensor]) -> None:
    """T ordinary SGD steps of the student module on the same mini-batches and soft targets."""
    model = w.student.model
    optimizer = torch.optim.SGD(model.parameters(), lr=w.lr)
    images, texts = w.images.detach(), w.texts.detach()
    for idx in batches:
        with torch.no_grad():
            target = w.similarity.matrix(idx)
        loss = soft_contrastive_loss(model(images[idx], texts[idx]), target, w.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def tesla_iteration(w: Workload, batches: list[torch.Tensor]) -> float:
    """One TESLA matching iteration, exactly as distill runs it; returns the matching loss."""
    w.zero_grad()
    return tesla_match(w.student, w.images, w.texts, w.similarity, w.lr, w.lr, w.start, w.target,
                       batches, MatchOptions(w.loss)).loss


def unrolled_iteration(w: Workload, batches: list[torch.Tensor]) -> float:
    """The MTT form VL-distill uses (`distill.matching: unroll`): the graph of all T steps kept."""
    w.zero_grad()
    return unroll_match(w.student, w.images, w.texts, w.similarity, w.lr, w.lr, w.start, w.target,
                        batches, MatchOptions(w.loss)).loss


METHODS = {"plain": plain_steps, "tesla": tesla_iteration, "unrolled": unrolled_iteration}
