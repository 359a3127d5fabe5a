"""The student (and expert) model: a trainable image tower and a projection head over frozen
text embeddings, compared by cosine similarity at a fixed temperature (as CLIP, and as the
VL-distill / LoRS references).

    logits = (1 / tau) * norm(f(x; phi)) @ norm(g(y; psi)).T        # (b, b)

With `frozen_backbone` (RepBlend) the tower is a fixed feature extractor followed by a
trainable image head at its width, f(x; phi) = h(B(x); phi): phi is the image head only.

Distillation runs the student functionally from two flat parameter vectors (phi for the
image tower or head, psi for the text head) with `torch.func.functional_call`; experts and
evaluation students train it as an ordinary module.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..runtime.seeds import seeded
from ..registry import tower_family
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


@dataclass(frozen=True)
class Blend:
    """RepBlend's representation blending of a mini-batch: v -> lam v + (1 - lam) v[perm], the
    same lam and perm for the image features and the text embeddings (soft targets unblended)."""

    lam: float
    perm: torch.Tensor

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.lam * v + (1.0 - self.lam) * v[self.perm.to(v.device)]

    @staticmethod
    def draw(alpha: float, batch: int) -> "Blend":
        """lam ~ Beta(alpha, alpha) and one permutation, from torch's global CPU generator: the
        caller seeds each student step (`seeds.seeded`), so a replayed step draws them again."""
        concentration = torch.tensor(float(alpha))
        lam = float(torch.distributions.Beta(concentration, concentration).sample())
        return Blend(lam, torch.randperm(batch))


def freeze(module: nn.Module) -> nn.Module:
    """Turn every parameter of `module` into a buffer of the same name: frozen weights are state,
    not parameters, so no optimizer, parameter layout or trajectory snapshot can pick them up,
    while `.to()`, `state_dict()` and the forward see them as before."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                del sub._parameters[name]
                sub.register_buffer(name, param.detach())
    return module


class DualEncoder(nn.Module):
    """Image tower (+ image head) and text head; `forward(x, y)` gives the (b, b) logits of a
    batch of pairs.

    `batchnorm="frozen"` keeps every batch-norm layer of the image tower in eval mode (its
    running statistics, never updated), also while the rest trains: the student is then a
    pure function of its parameters. `"batch"` is PyTorch's usual train/eval behaviour.

    `frozen_backbone`: the tower's weights become buffers (`freeze`) and the tower always runs
    in eval mode (batch norm on its running statistics whatever `batchnorm` says), a fixed
    function B; a trainable `image_head` at its width follows. Inputs of
    shape (b, d) are then taken to be B's features already (the real-image feature cache,
    `vldistill.algorithms.repblend`) and go straight to the head. Blending (`forward(blend=...)`) is
    what distillation's functional student asks for (`FunctionalStudent`); training the
    module itself (experts, evaluation) never blends.
    """

    def __init__(self, image_tower: nn.Module, text_dim: int, temperature: float = 0.07,
                 dropout: float = 0.0, batchnorm: str = "batch", frozen_backbone: bool = False):
        super().__init__()
        width = image_tower.num_features
        self.image_tower = freeze(image_tower) if frozen_backbone else image_tower
        self.image_head = ProjectionHead(width, width, dropout) if frozen_backbone else None
        self.text_head = ProjectionHead(text_dim, width, dropout)
        self.logit_scale = 1.0 / temperature
        self.batchnorm = "frozen" if frozen_backbone else batchnorm
        self.autocast_dtype: torch.dtype | None = None     # bf16 towers: see vldistill.models.accel
        self.train()

    @property
    def frozen_backbone(self) -> bool:
        return self.image_head is not None

    @property
    def image_prefix(self) -> str:
        """Name prefix of the trainable image parameters (phi)."""
        return "image_head." if self.frozen_backbone else "image_tower."

    def image_parameters(self):
        """The trainable image parameters: the image head, or the whole tower."""
        return (self.image_head if self.frozen_backbone else self.image_tower).parameters()

    def train(self, mode: bool = True) -> "DualEncoder":
        super().train(mode)
        if self.frozen_backbone:
            self.image_tower.eval()
        elif self.batchnorm == "frozen":
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

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """What comes before the heads: the tower's output, or x itself when it already holds a
        frozen backbone's features (b, d)."""
        return x if self.frozen_backbone and x.ndim == 2 else self._run(self.image_tower, x)

    def _embed_image(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._run(self.image_head, f) if self.frozen_backbone else f, dim=-1)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed_image(self.represent(x))

    def encode_text(self, y: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._run(self.text_head, y), dim=-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, logit_scale: float | None = None,
                blend: Blend | None = None) -> torch.Tensor:
        """(b, b) logits; `logit_scale` replaces 1 / temperature (distillation's inner loop);
        `blend` mixes the image representations and the text embeddings before the heads."""
        scale = self.logit_scale if logit_scale is None else logit_scale
        f = self.represent(x)
        if blend is not None:
            f, y = blend(f), blend(y)
        return scale * self._embed_image(f) @ self.encode_text(y).t()


BACKBONE_SEED = 0          # a randomly initialized frozen backbone: the same for every student


def _seeded(seed: int | None):
    return seeded(seed) if seed is not None else contextlib.nullcontext()


def build_student(model_cfg: "ModelConfig", image_size: int, text_dim: int, seed: int | None = None,
                  image_tower: str | None = None) -> DualEncoder:
    """A fresh student from the config; `seed` makes the initialization reproducible.

    The seeded initialization draws from a forked copy of torch's global generator, so
    building a student never changes the random numbers the caller draws next. A frozen
    backbone is the same function for every student (experts, distillation, evaluation), so a
    randomly initialized one is drawn from the fixed seed `BACKBONE_SEED`, not from `seed`.
    """
    frozen = model_cfg.frozen_backbone
    with _seeded(seed):
        with _seeded(BACKBONE_SEED) if frozen else contextlib.nullcontext():
            name = image_tower or model_cfg.image_tower
            tower = create_image_tower(name, image_size, pretrained_path=model_cfg.pretrained_path,
                                       **model_cfg.image_tower_args.get(tower_family(name), {}))
        return DualEncoder(tower, text_dim, model_cfg.temperature, model_cfg.head_dropout,
                           model_cfg.batchnorm, frozen)


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
    """A `DualEncoder` run from flat vectors: phi (its trainable image parameters: the tower, or
    the head over a frozen backbone) and psi (text head).

    `logit_scale` (default: the model's 1 / temperature) scales its logits: distillation's
    inner loop may use another scale than the experts trained with (`distill.logit_scale`).
    `blend_alpha` > 0 (`distill.blend_alpha`) blends every call's representations (RepBlend):
    lam and perm are drawn from torch's global generator, which each matching step seeds, so
    both TESLA passes of a step blend alike.
    """

    def __init__(self, model: DualEncoder, logit_scale: float | None = None, blend_alpha: float = 0.0):
        self.model, self.logit_scale, self.blend_alpha = model, logit_scale, blend_alpha
        self.image_layout = ParamLayout.of(model, model.image_prefix)
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
        blend = Blend.draw(self.blend_alpha, len(x)) if self.blend_alpha > 0 else None
        return functional_call(self.model, params, (x, y), {"logit_scale": self.logit_scale, "blend": blend})
