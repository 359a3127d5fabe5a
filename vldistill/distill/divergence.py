"""The divergence guard of distillation: a run that blows up to huge but finite values stops,
with the last good set saved, instead of training on garbage until it turns NaN.

Three quantities are watched against their value at the start of the run: the matching loss
(the first finite iteration's), and the RMS of the synthetic images and of the text embeddings
(at initialisation). When one exceeds `distill.max_growth` times its start, the run stops
with `DivergedError`, which names the iteration, what grew and which lr to lower, and carries
the set as it was before the update that diverged (the caller saves it, `run_distill`). The
loss is checked before the update, the set after it, so neither the saved set nor the last
checkpoint holds the diverged values. The starts are part of the checkpoint, so a resumed run
keeps the same bound. A healthy run never comes near the default of 1000 (README).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError

WATCHED = ("loss", "images", "texts")
_WHAT = {"loss": "the matching loss", "images": "the synthetic images' RMS",
         "texts": "the synthetic text embeddings' RMS"}
_LOWER = {"loss": "distill.lr_lr (the student lrs grow) or distill.lr_img / lr_txt",
          "images": "distill.lr_img", "texts": "distill.lr_txt"}


class DivergedError(UserError):
    """Distillation diverged; `values` is the last good set (`Distiller._exported` order) and
    `record` the metrics record of the iteration that stopped it."""

    def __init__(self, message: str, values: list[torch.Tensor], record: dict):
        super().__init__(message)
        self.values, self.record = values, record


def rms(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt())


@dataclass
class GrowthGuard:
    """Each watched quantity's start (0: not seen yet), the bound (0: no guard) and the lrs a
    message names (`{"distill.lr_img": 1000.0, ...}`)."""

    max_growth: float
    lrs: dict[str, float] = field(default_factory=dict)
    start: dict[str, float] = field(default_factory=lambda: dict.fromkeys(WATCHED, 0.0))

    def growth(self, name: str, value: float) -> float:
        """value / its start, the start taken now if unknown (a zero start grows by nothing)."""
        if not self.start[name]:
            self.start[name] = value
        return value / self.start[name] if self.start[name] else 1.0

    def check(self, values: dict[str, float], iteration: int, last_good: list[torch.Tensor] | None,
              record: dict) -> dict[str, float]:
        """The growths of `values`; raises `DivergedError` when one is past the bound."""
        growths = {name: self.growth(name, v) for name, v in values.items() if math.isfinite(v)}
        over = [n for n, g in growths.items() if self.max_growth and g > self.max_growth]
        if over:
            name = over[0]
            lower = _LOWER[name]
            now = ", ".join(f"{k.removeprefix('distill.')} {v:g}" for k, v in self.lrs.items())
            raise DivergedError(
                f"distillation diverged at iteration {iteration}: {_WHAT[name]} grew to "
                f"{values[name]:.4g}, {growths[name]:.3g} times its start (distill.max_growth="
                f"{self.max_growth:g}); lower {lower} ({now})",
                last_good, record | {"diverged": name, "growth": growths})
        return growths

    def state_tensor(self) -> torch.Tensor:
        return torch.tensor([self.start[n] for n in WATCHED], dtype=torch.float64)

    def load(self, state: torch.Tensor | None) -> None:
        """Starts from a checkpoint (one written before the guard existed leaves them to be taken
        from the resumed run)."""
        if state is not None:
            self.start = dict(zip(WATCHED, state.tolist()))


def save_last_good(err: DivergedError, last_good, path: Path, checkpoint: Path) -> DivergedError:
    """Save `last_good` (the `DistilledSet` of err.values) as PATH_last_good; the error again,
    saying where it is and whether a checkpoint is kept."""
    saved = last_good.save(path.with_name(path.name + "_last_good"))
    kept = "the last checkpoint is kept" if checkpoint.is_file() else "no checkpoint yet"
    return DivergedError(f"{err}. The set before that update is saved at "
                         f"{str(saved.with_suffix('.safetensors'))!r}; {kept}", err.values, err.record)


__all__ = ["DivergedError", "GrowthGuard", "WATCHED", "rms", "save_last_good"]
