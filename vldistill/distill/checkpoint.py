"""Distill checkpoints: everything a killed run needs to continue bit for bit, and nothing unsafe.

A checkpoint is `checkpoints/METHOD.safetensors` (the authority) plus `METHOD.json` (the same
summary for people). The tensors are the `Distiller`'s state -- set values, optimizer
momentum, EMA, its generator, counters, the best-so-far set. Distillation draws every random
number from its own generator (dropout from per-step seeds drawn from it, `vldistill.runtime.seeds`),
never from the process-wide ones, so that generator's state is all a resumed run needs. Both files are written atomically
(`vldistill.runtime.io`): until the new file is complete the previous checkpoint is what is on disk.

A checkpoint is never written with a NaN or inf in it: `write_checkpoint` checks first and
raises `NonFiniteError`, leaving the last good one in place. On load, the setup it was made
with (similarity kind, pair count, lr parameterization, ...) must match the run's; a field
that differs is named.

"Best so far" is the set at the end of the window of `distill.checkpoint_every` iterations
with the lowest mean matching loss (iterations whose loss was not finite left out). The
matching loss of one iteration depends on the expert and start epoch drawn, so a window mean
is the cheapest honest comparison; it is not a retrieval score (evaluate the saved best set
for that).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import NonFiniteError, UserError
from ..runtime.io import read_tensors_and_metadata, write_json, write_tensors

CHECKPOINT_FORMAT = 2          # 2: no process-wide RNG states (nothing in distill draws from them)
_UNCHECKED = ("best.window",)       # holds inf before the first window closes, by design


def non_finite_entries(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf."""
    return [name for name, t in state.items() if name not in _UNCHECKED and t.is_floating_point()
            and not bool(torch.isfinite(t).all())]


def write_checkpoint(path: Path, state: dict[str, torch.Tensor], info: dict) -> None:
    """Check, then atomically write the state and its JSON summary.

    Raises:
        NonFiniteError: a tensor holds NaN/inf; nothing is written, the last checkpoint stays.
    """
    bad = non_finite_entries(state)
    if bad:
        raise NonFiniteError(f"refusing to write checkpoint {path} at iteration {info.get('iteration')}: "
                             f"{', '.join(bad[:4])} hold NaN/inf (likely cause: distill.lr_img, lr_txt "
                             "or lr_sim too high); the last good checkpoint is kept")
    # one metadata entry: safetensors writes several in a random order, and equal runs should
    # give equal bytes
    header = {"format": CHECKPOINT_FORMAT, "info": info}
    write_tensors(path, state, metadata={"checkpoint": json.dumps(header)})
    write_json(path.with_suffix(".json"), info | {"written": time.strftime("%Y-%m-%d %H:%M:%S")})


def read_checkpoint(path: Path, setup: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint made with the same setup.

    Returns:
        The distiller state and the info dict it was written with.
    """
    tensors, metadata = read_tensors_and_metadata(path)
    header = json.loads(metadata.get("checkpoint", "{}"))
    if header.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"checkpoint {path} has format {header.get('format')}, this vldistill reads "
                        f"{CHECKPOINT_FORMAT}: delete it or set distill.resume=false to start over")
    info = header["info"]
    stored = info.get("setup", {})
    for key, value in setup.items():
        if stored.get(key) != value:
            raise UserError(f"checkpoint {path} was made with {key}={json.dumps(stored.get(key))}, this "
                            f"run has {key}={json.dumps(value)}: restore the run's config, or delete "
                            "the checkpoint / set distill.resume=false to start over")
    return tensors, info


@dataclass
class BestSoFar:
    """The set with the lowest mean matching loss over a window of iterations (see module doc)."""

    window_sum: float = 0.0
    window_count: int = 0
    loss: float = math.inf
    iteration: int = 0
    values: list[torch.Tensor] | None = field(default=None, repr=False)

    def observe(self, loss: float) -> None:
        if math.isfinite(loss):
            self.window_sum += loss
            self.window_count += 1

    def close_window(self, values: list[torch.Tensor], iteration: int) -> bool:
        """End the window at `iteration`; keep `values` if its mean loss is the lowest so far."""
        mean = self.window_sum / self.window_count if self.window_count else math.inf
        self.window_sum, self.window_count = 0.0, 0
        if mean >= self.loss:
            return False
        self.loss, self.iteration = mean, iteration
        self.values = [v.detach().clone() for v in values]
        return True

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = {"best.window": torch.tensor([self.window_sum, self.window_count, self.loss,
                                              self.iteration], dtype=torch.float64)}
        state.update({f"best.value.{i}": v for i, v in enumerate(self.values or [])})
        return state

    def load(self, state: dict[str, torch.Tensor]) -> None:
        window_sum, count, loss, iteration = state["best.window"].tolist()
        self.window_sum, self.window_count, self.loss, self.iteration = window_sum, int(count), loss, int(iteration)
        values = [state[k] for k in sorted((k for k in state if k.startswith("best.value.")),
                                           key=lambda k: int(k.rsplit(".", 1)[1]))]
        self.values = values or None
