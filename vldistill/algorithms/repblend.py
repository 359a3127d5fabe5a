"""RepBlend (Beyond Modality Collapse: Representations Blending for Multimodal Dataset
Distillation, NeurIPS 2025; github.com/zhangxin-xd/RepBlend), built on LoRS.

What it changes, and where vldistill has it:

- a frozen image backbone followed by a trainable image head at its width; experts,
  distillation and evaluation train only the two heads, and trajectories hold the heads only
  (`model.frozen_backbone`, `vldistill.models.student.DualEncoder`);
- representation blending in every student step of distillation: after the backbone, before
  the heads, f~ = lam f + (1 - lam) f[pi] and e~ = lam e + (1 - lam) e[pi], one lam ~ Beta(a, a)
  and one permutation pi per step shared by both modalities and by both TESLA passes, the soft
  targets left unblended (`distill.blend_alpha`, `student.Blend`);
- evaluation trains the heads on the frozen backbone's features, scored every 20 epochs.

Here: the real-image feature cache (the frozen backbone runs once per image, so head-only
experts and evaluation never run it per batch; `buffer.backbone_per_batch` runs it per
augmented batch as the reference's experts do), and the two distilled methods `repblend` and
`repblend-noblend` (registered in `vldistill.evaluation.methods`).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch

from ..config import Config
from ..config_merge import derive
from ..data import PreparedData
from ..data.splits import CaptionDataset, CaptionSplit, ordered_batches
from ..data.text_cache import default_cache_dir
from ..runtime.io import read_tensors, write_tensors
from ..models.student import DualEncoder

log = logging.getLogger(__name__)

ALPHA = 1.0                 # the reference's --alpha_2 default: lam ~ Beta(1, 1) = U(0, 1)
EVAL_EVERY = 20             # its evaluation scores every Epoch // 5 = 20 epochs (LoRS: every 10)
FEATURE_FORMAT = 1          # bump when how features are computed changes


# ------------------------------------------------------------------ the methods
def repblend(cfg: Config) -> Config:
    """RepBlend: the run's LoRS settings with a frozen backbone and head-only trajectories,
    representations blended in every student step (distill.blend_alpha; 1 unless the run sets
    one), evaluated by training the two heads on the frozen features (scored every 20 epochs
    in reference fidelity, as its code does)."""
    alpha = cfg.distill.blend_alpha or ALPHA
    return derive(heads_only(cfg), [f"distill.blend_alpha={alpha}"])


def repblend_noblend(cfg: Config) -> Config:
    """RepBlend without blending: frozen backbone, head-only trajectories and evaluation."""
    return derive(heads_only(cfg), ["distill.blend_alpha=0"])


def heads_only(cfg: Config) -> Config:
    """`cfg` with a frozen backbone and RepBlend's evaluation schedule. Its experts train only the
    heads, so a run whose own experts train the tower gets a store of its own, `<store>-heads`."""
    overrides = ["model.frozen_backbone=true"]
    if cfg.fidelity == "reference":
        overrides.append(f"eval.val_every={EVAL_EVERY}")
    out = derive(cfg, overrides)
    if not cfg.model.frozen_backbone:
        store = Path(cfg.buffer.dir) if cfg.buffer.dir else Path(cfg.run_dir) / "buffer"
        out = replace(out, buffer=replace(out.buffer, dir=f"{store}-heads"))
    return out


# ------------------------------------------------------------------ the real-image feature cache
@dataclass
class CachedFeatures:
    """An `ImageSource` whose images are a frozen backbone's features (n, d): a student with
    that backbone takes them straight into its image head (`DualEncoder.represent`)."""

    features: torch.Tensor

    def __len__(self) -> int:
        return len(self.features)

    def get_batch(self, indices: torch.Tensor, train: bool = False) -> torch.Tensor:
        return self.features[indices]


def with_cached_features(model: DualEncoder, data: PreparedData, cfg: Config, device: torch.device,
                         splits: tuple[str, ...]) -> PreparedData:
    """`data` with the given splits' images replaced by `model`'s frozen backbone features
    (computed once per dataset, backbone weights and image size, then read from the cache);
    `data` itself for a model whose tower trains."""
    if not model.frozen_backbone or not splits:
        return data
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    identity = backbone_identity(model)
    swapped = {name: replace(data.split(name), images=CachedFeatures(
        split_features(model, data.dataset, name, identity, cache_dir, device))) for name in splits}
    return replace(data, dataset=replace(data.dataset, **swapped))


def real_data_for(model: DualEncoder, data: PreparedData, cfg: Config, device: torch.device,
                  scored: tuple[str, ...], train: bool = False) -> PreparedData:
    """The data a student trains (`train`: on the training split) and is scored on (`scored`):
    the frozen backbone's cached features, except the training split under
    buffer.backbone_per_batch, whose augmented images go through the backbone every batch."""
    cached_train = train and not cfg.buffer.backbone_per_batch
    return with_cached_features(model, data, cfg, device, (("train",) if cached_train else ()) + scored)


def set_inputs(model: DualEncoder, images: torch.Tensor, augmentation: str) -> torch.Tensor:
    """What an evaluation student reads of a set's images: with a frozen backbone and no
    augmentation, their features, computed once (the images do not change while it trains)."""
    if not model.frozen_backbone or augmentation != "none":
        return images
    return backbone_features(model, images)


@torch.no_grad()
def backbone_features(model: DualEncoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The frozen backbone's fp32 features of (normalized) images, batch by batch."""
    return torch.cat([model.image_tower(images[i:i + batch_size]).float()
                      for i in range(0, len(images), batch_size)])


def backbone_identity(model: DualEncoder) -> str:
    """A hash of the backbone's architecture and every weight and buffer it holds."""
    h = hashlib.sha256(f"{FEATURE_FORMAT}\0{type(model.image_tower).__qualname__}".encode())
    for name, tensor in model.image_tower.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def split_features(model: DualEncoder, dataset: CaptionDataset, name: str, identity: str,
                   cache_dir: Path, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """(n_images, d) backbone features of a split's plain (test-transform) images, from
    cache_dir/features/ when present, else computed and written there (atomically)."""
    split: CaptionSplit = getattr(dataset, name)
    h = hashlib.sha256(f"{identity}\0{dataset.fingerprint}\0{dataset.image_size}\0{name}\0"
                       f"{split.n_images}".encode())
    for text in [*split.image_names, *split.captions]:
        h.update(b"\0" + text.encode())
    h.update(split.caption_image.numpy().tobytes())
    path = cache_dir / "features" / f"{h.hexdigest()[:24]}.safetensors"
    if path.is_file():
        return _read(str(path))
    log.info("computing frozen backbone features of %d %s images (cached at %s)", split.n_images, name, path)
    features = torch.cat([backbone_features(model, batch.to(device)).cpu()
                          for batch in ordered_batches(split.images, batch_size)])
    write_tensors(path, {"features": features}, metadata={"split": name, "dataset": dataset.name})
    return features


@lru_cache(maxsize=6)
def _read(path: str) -> torch.Tensor:
    """A cached feature file, read once per process (later students reuse it)."""
    return read_tensors(Path(path))["features"]


__all__ = ["CachedFeatures", "backbone_features", "backbone_identity", "heads_only", "real_data_for",
           "repblend", "repblend_noblend", "set_inputs", "split_features", "with_cached_features"]
