"""The pre-flight memory estimate of distillation: high enough to trust, refused when too big."""
from __future__ import annotations

import logging

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from vldistill.distill import memory
from vldistill.errors import UserError
from vldistill.algorithms.matching import MatchOptions, sample_batches, tesla_match, unroll_match
from vldistill.models.image_towers import ConvNet
from vldistill.models.student import DualEncoder, FunctionalStudent
from vldistill.algorithms.similarity import build_similarity


def _peak_tensor_bytes(fn) -> int:
    """Peak of live tensor bytes fn allocates (torch CPU allocator events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("steps", [2, 12])
def test_estimate_covers_a_measured_iteration(steps):
    torch.manual_seed(0)
    n, batch, size, text_dim = 40, 10, 16, 24
    model = DualEncoder(ConvNet(size, width=16, depth=2), text_dim)
    student = FunctionalStudent(model)
    images = torch.randn(n, 3, size, size, requires_grad=True)
    texts = torch.randn(n, text_dim, requires_grad=True)
    sim = build_similarity("lowrank", n, 4, 1.0)
    start = student.flat_params()
    target = tuple(p + 0.01 * torch.randn_like(p) for p in start)
    batches = sample_batches(n, batch, steps, torch.Generator().manual_seed(0))

    def iteration():
        tesla_match(student, images, texts, sim, 0.1, 0.1, start, target, batches, MatchOptions())
    iteration()                                         # .grad buffers exist from here on
    resident = sum(t.numel() * 4 for t in (*model.parameters(), *start, *target, images, texts,
                                           images.grad, texts.grad, *sim.parameters()))
    measured = resident + _peak_tensor_bytes(iteration)
    estimate = memory.estimate_distill_memory(model, n, batch, size, text_dim,
                                              sum(p.numel() for p in sim.parameters()))
    assert measured <= estimate.total <= 4 * measured, (measured, estimate.parts)


def _matching_peak(match, steps: int) -> int:
    torch.manual_seed(0)
    n, batch, size, text_dim = 40, 10, 16, 24
    student = FunctionalStudent(DualEncoder(ConvNet(size, width=16, depth=2), text_dim))
    images = torch.randn(n, 3, size, size, requires_grad=True)
    texts = torch.randn(n, text_dim, requires_grad=True)
    sim = build_similarity("identity", n)
    start = student.flat_params()
    target = tuple(p + 0.01 * torch.randn_like(p) for p in start)
    batches = sample_batches(n, batch, steps, torch.Generator().manual_seed(0))
    return _peak_tensor_bytes(lambda: match(student, images, texts, sim, 0.1, 0.1, start, target,
                                            batches, MatchOptions()))


def test_full_unroll_memory_grows_with_steps_and_teslas_does_not():
    tesla = {t: _matching_peak(tesla_match, t) for t in (2, 8)}
    unroll = {t: _matching_peak(unroll_match, t) for t in (2, 8)}
    assert tesla[8] <= 1.15 * tesla[2]
    assert unroll[8] >= 2.5 * unroll[2]
    model = DualEncoder(ConvNet(16, width=16, depth=2), 24)
    kept = [memory.estimate_distill_memory(model, 40, 10, 16, 24, kept_steps=t).total for t in (2, 8)]
    assert kept[1] >= 2.5 * kept[0] and kept[1] >= unroll[8]       # the estimate follows (and covers) it


def test_saved_bytes_scale_with_the_image_area():
    small, large = (memory.saved_bytes_per_pair(DualEncoder(ConvNet(s, width=8, depth=2), 16), s, 16)
                    for s in (16, 32))
    assert 3.5 * small <= large <= 4.5 * small          # activations ~ H x W


def test_distill_that_cannot_fit_is_refused(tiny_cfg, monkeypatch, caplog):
    cfg = tiny_cfg()
    with caplog.at_level(logging.INFO, logger="vldistill.distill.memory"):
        estimate = memory.check_distill_fits(cfg, 16, 384, torch.device("cpu"))
    assert estimate is not None and estimate.total > 0
    assert "distill memory estimate" in caplog.text and "available of" in caplog.text

    monkeypatch.setattr(memory, "device_memory", lambda device: (estimate.total // 2, 2 * estimate.total))
    with pytest.raises(UserError, match="distillation needs about .* lower distill.mini_batch"):
        memory.check_distill_fits(cfg, 16, 384, torch.device("cpu"))


def test_full_similarity_at_scale_is_refused_without_allocating(tiny_cfg):
    # 300,000 pairs with a full N x N similarity: ~1 TB; built on the meta device, so this is quick
    cfg = tiny_cfg("distill.n_pairs=300000", "distill.sim_kind=full")
    with pytest.raises(UserError, match="distillation needs about"):
        memory.check_distill_fits(cfg, 16, 384, torch.device("cpu"))
