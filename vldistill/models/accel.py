"""Placing a student on its device for training and evaluation: bf16 autocast and
channels_last where they pay off.

Experts, evaluation students and the full-data bound train ordinary modules, so they can use
`amp: bf16` (autocast of the towers' forward; the logits, loss and optimizer stay fp32, and
bf16 needs no loss scaling). Distillation does not come through here: its student runs
functionally in fp32, because the matching gradient is a difference of nearby trajectories
and has not been shown to survive bf16. channels_last speeds up convolutions on GPUs (tensor
cores read NHWC) and is left off on CPUs, where it does not.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .student import DualEncoder

log = logging.getLogger(__name__)

_warned: set[str] = set()


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bf16 natively (else autocast would only emulate it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `amp` on this device, or None (fp32) where it does not help."""
    if amp == "none":
        return None
    if not native_bf16(device):
        if str(device) not in _warned:
            _warned.add(str(device))
            log.warning("amp=%s asked for, but %s has no native bf16: training in fp32", amp, device)
        return None
    return torch.bfloat16


def wants_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Conv towers on a GPU."""
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def prepare_student(model: DualEncoder, device: torch.device, amp: str = "none") -> DualEncoder:
    """Move a student to `device`, NHWC weights for a conv tower on a GPU, autocast per `amp`."""
    model = model.to(device)
    if wants_channels_last(model.image_tower, device):
        model.image_tower.to(memory_format=torch.channels_last)
    model.autocast_dtype = amp_dtype(amp, device)
    return model
