"""bf16 autocast and channels_last placement of training/evaluation students (vldistill.accel)."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from vldistill import accel
from vldistill.models.image_towers import ConvNet
from vldistill.models.student import DualEncoder
from vldistill.training import contrastive_step, sgd_for_student


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
    with caplog.at_level(logging.WARNING, logger="vldistill.accel"):
        model = accel.prepare_student(_student(), torch.device("cpu"), "bf16")
    assert model.autocast_dtype is None and "no native bf16" in caplog.text


def test_channels_last_only_for_conv_towers_on_gpus():
    conv, mlp = ConvNet(16, width=8, depth=2), nn.Sequential(nn.Flatten(), nn.Linear(768, 4))
    assert accel.wants_channels_last(conv, torch.device("cuda"))
    assert not accel.wants_channels_last(conv, torch.device("cpu"))
    assert not accel.wants_channels_last(mlp, torch.device("cuda"))


def test_experts_trained_in_bf16_store_fp32_trajectories(tiny_cfg, tiny_data, monkeypatch, tmp_path):
    from vldistill.experts import run_buffer
    from vldistill.trajectories import TrajectoryStore
    monkeypatch.setattr(accel, "native_bf16", lambda device: True)
    cfg = tiny_cfg("amp=bf16")
    store = run_buffer(cfg, tiny_data, torch.device("cpu"), TrajectoryStore(tmp_path / "buffer"))
    snapshot = store.load(0, 1)
    assert snapshot.image.dtype == torch.float32 and torch.isfinite(snapshot.image).all()
