"""The student (and expert) model: a trainable image tower and a projection head over frozen
text embeddings, compared by cosine similarity at a fixed temperature (as CLIP, and as the
VL-distill / LoRS references).

    logits = (1 / tau) * norm(f(x; phi)) @ norm(g(y; psi)).T        # (b, b)

Distillation runs the student functionally from two flat parameter vectors (phi for the
image tower, psi for the text head) with `torch.func.functional_call`; experts and evaluation
students train it as an ordinary module.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..seeds import seeded
from .image_towers import create_image_tower

if TYPE_CHECKING:
    from ..config import ModelConfig


class ProjectionHead(nn.Module):
    """linear -> GELU -> linear -> dropout -> residual -> LayerNorm (the reference's head)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        projected = self.projection(y)
        return self.layer_norm(projected + self.dropout(self.fc(F.gelu(projected))))


class DualEncoder(nn.Module):
    """Image tower + text head; `forward(x, y)` gives the (b, b) logits of a batch of pairs.

    `batchnorm="frozen"` keeps every batch-norm layer of the image tower in eval mode (its
    running statistics, never updated), also while the rest trains: the student is then a
    pure function of its parameters. `"batch"` is PyTorch's usual train/eval behaviour.
    """

    def __init__(self, image_tower: nn.Module, text_dim: int, temperature: float = 0.07,
                 dropout: float = 0.0, batchnorm: str = "batch"):
        super().__init__()
        self.image_tower = image_tower
        self.text_head = ProjectionHead(text_dim, image_tower.num_features, dropout)
        self.logit_scale = 1.0 / temperature
        self.batchnorm = batchnorm
        self.autocast_dtype: torch.dtype | None = None     # bf16 towers: see vldistill.accel
        self.train()

    def train(self, mode: bool = True) -> "DualEncoder":
        super().train(mode)
        if self.batchnorm == "frozen":
            for module in self.image_tower.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def _run(self, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """A tower's output, in fp32 (computed under autocast when autocast_dtype is set)."""
        if self.autocast_dtype is None:
            return module(inputs)
        with torch.autocast(inputs.device.type, dtype=self.autocast_dtype):
            return module(inputs).float()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._run(self.image_tower, x), dim=-1)

    def encode_text(self, y: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._run(self.text_head, y), dim=-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, logit_scale: float | None = None) -> torch.Tensor:
        """(b, b) logits; `logit_scale` replaces 1 / temperature (distillation's inner loop)."""
        scale = self.logit_scale if logit_scale is None else logit_scale
        return scale * self.encode_image(x) @ self.encode_text(y).t()


def build_student(model_cfg: "ModelConfig", image_size: int, text_dim: int, seed: int | None = None,
                  image_tower: str | None = None) -> DualEncoder:
    """A fresh student from the config; `seed` makes the initialization reproducible.

    The seeded initialization draws from a forked copy of torch's global generator, so
    building a student never changes the random numbers the caller draws next.
    """
    with seeded(seed) if seed is not None else contextlib.nullcontext():
        tower = create_image_tower(image_tower or model_cfg.image_tower, image_size,
                                   pretrained_path=model_cfg.pretrained_path,
                                   width=model_cfg.convnet_width, depth=model_cfg.convnet_depth)
        return DualEncoder(tower, text_dim, model_cfg.temperature, model_cfg.head_dropout,
                           model_cfg.batchnorm)


@dataclass
class ParamLayout:
    """Names and shapes of a group of parameters, to move between a flat vector and a dict."""

    names: list[str]
    shapes: list[torch.Size]

    @classmethod
    def of(cls, module: nn.Module, prefix: str) -> "ParamLayout":
        named = [(n, p.shape) for n, p in module.named_parameters() if n.startswith(prefix)]
        return cls([n for n, _ in named], [s for _, s in named])

    @property
    def numel(self) -> int:
        return sum(s.numel() for s in self.shapes)

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views into `flat` (gradients flow back to it)."""
        chunks = flat.split([s.numel() for s in self.shapes])
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def describe(self) -> list[list]:
        return [[n, list(s)] for n, s in zip(self.names, self.shapes)]


class FunctionalStudent:
    """A `DualEncoder` run from flat vectors: phi (image tower) and psi (text head).

    `logit_scale` (default: the model's 1 / temperature) scales its logits: distillation's
    inner loop may use another scale than the experts trained with (`distill.logit_scale`).
    """

    def __init__(self, model: DualEncoder, logit_scale: float | None = None):
        self.model, self.logit_scale = model, logit_scale
        self.image_layout = ParamLayout.of(model, "image_tower.")
        self.text_layout = ParamLayout.of(model, "text_head.")

    def flat_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return (self.image_layout.flatten(params).detach().clone(),
                self.text_layout.flatten(params).detach().clone())

    def logits(self, phi: torch.Tensor, psi: torch.Tensor, x: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:
        return self.logits_from({**self.image_layout.unflatten(phi), **self.text_layout.unflatten(psi)}, x, y)

    def logits_from(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
        """Logits with every parameter given by name (e.g. per-parameter leaves)."""
        return functional_call(self.model, params, (x, y), {"logit_scale": self.logit_scale})
