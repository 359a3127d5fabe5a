"""Will distillation fit? A pre-flight estimate of its peak memory, checked against the device.

TESLA holds one student step's graph (kept for the second backward) whatever T is, so the
peak is that graph plus what stays resident all run: the synthetic set with its gradient and
momentum, the similarity's parameters likewise, and a fixed number of copies of the student's
parameters (the module, expert start and target, the moving position, the gradient sum, the
step gradient and its graph). Activation bytes per pair come from running the tower on the
meta device (no memory, no arithmetic) and summing the tensors autograd saves. The factors
below were fitted to the peaks bench/bench_memory.py measured (convnet at 32 px, nfnet_l0 at
96 and 224 px: about 7 parameter-sized vectors and 3.5x the forward's saved tensors above
what was resident) and rounded up, so the estimate errs high (by 10-60% on those).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

FLOAT_BYTES = 4
PARAM_COPIES = 11           # student-sized vectors at the peak: ~7 working + module, start, target
GRAPH_FACTOR = 4.0          # a step's graph kept for the double backward / forward saved tensors
SET_COPIES = 3              # value, gradient, momentum of every learned tensor
UNROLL_COPIES = 4           # per extra unrolled step: phi_t, g_t and the double backward's buffers


@dataclass
class MemoryEstimate:
    """Estimated peak bytes of a distillation, by part."""

    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {_gib(value)}" for name, value in self.parts.items())


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def saved_bytes_per_pair(model: nn.Module, image_size: int, text_dim: int) -> int:
    """Bytes autograd saves in one forward of `model(x, y)`, per pair of the batch.

    Runs on the meta device: shapes only. Batch-size-independent tensors (weights and what is
    computed from them) cancel out between a batch of 2 and a batch of 1.
    """
    meta = copy.deepcopy(model).to("meta")

    def saved(batch: int) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        # the synthetic images and texts require grad, so a frozen backbone keeps its activations too
        x = torch.empty(batch, 3, image_size, image_size, device="meta", requires_grad=True)
        y = torch.empty(batch, text_dim, device="meta", requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            meta(x, y).sum()
        return total
    return max(saved(2) - saved(1), 0)


def estimate_distill_memory(model: nn.Module, n_pairs: int, mini_batch: int, image_size: int,
                            text_dim: int, sim_params: int = 0, ema: bool = False,
                            kept_steps: int = 1) -> MemoryEstimate:
    """Estimated peak bytes of distilling n_pairs with this student.

    Args:
        model: the student (a `DualEncoder`): its parameter count and activations.
        n_pairs, mini_batch, image_size, text_dim: the synthetic set and a student step's batch.
        sim_params: number of similarity parameters (lowrank: N (2r + 1); full: N^2).
        ema: an exponential moving average of the set is kept too.
        kept_steps: student steps whose graph is held at once: 1 for TESLA (any T), T for the
            full unroll, which also keeps each step's parameters and gradient.
    """
    params = sum(p.numel() for p in model.parameters())
    learned = n_pairs * (3 * image_size * image_size + text_dim) + sim_params
    graph = GRAPH_FACTOR * mini_batch * saved_bytes_per_pair(model, image_size, text_dim)
    return MemoryEstimate({
        "student step graph": int(kept_steps * graph),
        "student parameter copies": (PARAM_COPIES + UNROLL_COPIES * (kept_steps - 1)) * params * FLOAT_BYTES,
        "synthetic set, similarity (+grad, momentum)": (SET_COPIES + int(ema)) * learned * FLOAT_BYTES,
    })


def device_memory(device: torch.device) -> tuple[int | None, int | None]:
    """(available, total) bytes of the device: free GPU memory, or the host's available RAM."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return (int(info["MemAvailable"].split()[0]) * 1024, int(info["MemTotal"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        return (pages * os.sysconf("SC_PAGE_SIZE"), None) if pages else (None, None)


def check_distill_memory(estimate: MemoryEstimate, device: torch.device) -> None:
    """Log the estimate beside the device's memory; refuse a run that cannot fit."""
    available, total = device_memory(device)
    where = f"{device} ({_gib(available)} available of {_gib(total)})" if available and total \
        else f"{device} (available memory unknown)"
    log.info("distill memory estimate: %s peak on %s [%s]", _gib(estimate.total), where,
             estimate.describe())
    if available is not None and estimate.total > available:
        raise UserError(f"distillation needs about {_gib(estimate.total)} but {where}: lower "
                        "distill.mini_batch or distill.n_pairs, use a smaller data.image_size, "
                        "or run on a device with more memory")


def check_distill_fits(cfg: "Config", image_size: int, text_dim: int,
                       device: torch.device) -> MemoryEstimate | None:
    """Estimate a distillation of this config (student and similarity built on the meta
    device: no memory) and refuse it when it cannot fit; None when no estimate can be made."""
    d = cfg.distill
    from ..models.student import build_student
    from ..algorithms.similarity import configured_similarity
    try:
        with torch.device("meta"):
            model = build_student(dataclasses.replace(cfg.model, pretrained_path=None), image_size, text_dim)
            sim_params = sum(p.numel() for p in configured_similarity(d).parameters())
        estimate = estimate_distill_memory(model, d.n_pairs, d.mini_batch, image_size, text_dim,
                                           sim_params, ema=d.ema_decay > 0,
                                           kept_steps=d.syn_steps if d.matching == "unroll" else 1)
    except Exception as err:       # a tower that cannot be built on meta: run without the check
        log.warning("no distill memory estimate for %s (%s)", cfg.model.image_tower, err)
        return None
    check_distill_memory(estimate, device)
    return estimate

