"""bf16 autocast and channels_last placement of training/evaluation students (vldistill.models.accel)."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from vldistill.models import accel
from vldistill.models.image_towers import ConvNet
from vldistill.models.student import DualEncoder
from vldistill.algorithms.training import contrastive_step, sgd_for_student


def _student(seed: int = 0) -> DualEncoder:
    torch.manual_seed(seed)
    return DualEncoder(ConvNet(16, width=8, depth=2), 12)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, 16, 16, generator=g), torch.randn(6, 12, generator=g)


def test_amp_none_is_the_plain_fp32_student():
    x, y = _batch()
    plain, placed = _student(), accel.prepare_student(_student(), torch.device("cpu"), "none")
    assert placed.autocast_dtype is None
    assert torch.equal(plain(x, y), placed(x, y))


def test_bf16_runs_the_towers_in_bf16_and_keeps_logits_and_weights_fp32(monkeypatch):
    monkeypatch.setattr(accel, "native_bf16", lambda device: True)      # this CPU may lack it
    x, y = _batch()
    model = accel.prepare_student(_student(), torch.device("cpu"), "bf16")
    seen = []
    model.image_tower.features[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    logits = model(x, y)
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32
    torch.testing.assert_close(logits, _student()(x, y), rtol=0.1, atol=0.3)   # bf16 has ~3 digits
    optimizer = sgd_for_student(model, 0.1, 0.1, 0.0, 0.0)
    assert torch.isfinite(torch.tensor(contrastive_step(model, optimizer, x, y)))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_without_native_support_falls_back_to_fp32(monkeypatch, caplog):
    monkeypatch.setattr(accel, "native_bf16", lambda device: False)
    monkeypatch.setattr(accel, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="vldistill.models.accel"):
        model = accel.prepare_student(_student(), torch.device("cpu"), "bf16")
    assert model.autocast_dtype is None and "no native bf16" in caplog.text


def test_channels_last_only_for_conv_towers_on_gpus():
    conv, mlp = ConvNet(16, width=8, depth=2), nn.Sequential(nn.Flatten(), nn.Linear(768, 4))
    assert accel.wants_channels_last(conv, torch.device("cuda"))
    assert not accel.wants_channels_last(conv, torch.device("cpu"))
    assert not accel.wants_channels_last(mlp, torch.device("cuda"))


def test_channels_last_placement_changes_the_layout_not_the_numbers(monkeypatch):
    monkeypatch.setattr(accel, "wants_channels_last", lambda tower, device: True)   # as on a GPU
    x, y = _batch()
    placed = accel.prepare_student(_student(), torch.device("cpu"))
    weight = placed.image_tower.features[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    torch.testing.assert_close(placed(x, y), _student()(x, y), rtol=1e-5, atol=1e-5)


def test_amp_reaches_expert_training_and_the_trajectory_stays_close(tiny_cfg, tiny_data, monkeypatch, tmp_path):
    """amp=bf16 changes how experts train (the stored epoch-1 weights differ from an fp32
    expert's), and only by bf16 rounding (same start, close end)."""
    from vldistill.buffer.experts import run_buffer
    from vldistill.buffer.store import TrajectoryStore
    monkeypatch.setattr(accel, "native_bf16", lambda device: True)
    snapshots = {}
    for amp in ("none", "bf16"):
        store = run_buffer(tiny_cfg(f"amp={amp}"), tiny_data, torch.device("cpu"), TrajectoryStore(tmp_path / amp))
        snapshots[amp] = (store.load(0, 0).image, store.load(0, 1).image)
    (start32, end32), (start16, end16) = snapshots["none"], snapshots["bf16"]
    assert torch.equal(start32, start16) and end16.dtype == torch.float32
    moved, gap = (end32 - start32).norm(), (end16 - end32).norm()
    assert 0 < gap < 0.5 * moved
