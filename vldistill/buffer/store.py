"""The trajectory store: expert parameter snapshots per epoch, with a manifest that says what
made them. Written by the buffer stage (`vldistill.buffer.experts`), read by distillation and by the
coresets (which embed the data with a stored expert).

    manifest.json            towers, parameter layout, dims, dataset fingerprint, version
    expert_000.safetensors   tensors image.E / text.E (flat float32) for each kept epoch E

Experts are written atomically, so a crashed buffer never leaves a half-written expert, and
a restarted one skips the experts already there.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open

from .. import __version__
from ..errors import MissingFileError, UserError
from ..runtime.io import read_json, write_json, write_tensors
from ..models.image_towers import IMAGE_TOWERS
from ..models.student import DualEncoder, FunctionalStudent
from ..registry import tower_family

if TYPE_CHECKING:
    from ..config import Config
    from ..data import PreparedData

log = logging.getLogger(__name__)

STORE_FORMAT = 1
_BEFORE_RECORDED = {"pretrained": None, "batchnorm": "batch",   # what stores made before these keys mean
                    "frozen_backbone": False}
# recorded since, and not known for stores made before: their image_params pin the tower's shapes
_UNKNOWN_BEFORE = {"image_tower_args"}


@dataclass
class Snapshot:
    """Flat parameters of one expert epoch: image tower (or head over a frozen backbone) phi
    and text head psi."""

    image: torch.Tensor
    text: torch.Tensor


class TrajectoryStore:
    """A folder of expert trajectories with a manifest that says what made them."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def expert_path(self, k: int) -> Path:
        return self.dir / f"expert_{k:03d}.safetensors"

    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise MissingFileError(f"no trajectory store at {str(self.dir)!r} (manifest.json missing): "
                                   "run `vldistill buffer CONFIG` first or fix buffer.dir")
        return read_json(self.manifest_path)

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.manifest_path, manifest)

    def experts(self) -> list[int]:
        """Indices of the complete experts present (files are atomic: present means complete)."""
        return sorted(int(p.stem.split("_")[1]) for p in self.dir.glob("expert_*.safetensors"))

    def write_expert(self, k: int, snapshots: dict[int, Snapshot], metrics: dict) -> Path:
        tensors = {}
        for epoch, snap in snapshots.items():
            tensors[f"image.{epoch}"] = snap.image
            tensors[f"text.{epoch}"] = snap.text
        return write_tensors(self.expert_path(k), tensors, metadata={"metrics": json.dumps(metrics)})

    def load(self, k: int, epoch: int) -> Snapshot:
        """One snapshot, read without loading the rest of the expert's file."""
        with safe_open(str(self.expert_path(k)), framework="pt") as handle:
            keys = set(handle.keys())
            if f"image.{epoch}" not in keys:
                stored = sorted(int(key.split(".")[1]) for key in keys if key.startswith("image."))
                raise UserError(f"expert {k} has no epoch {epoch} (stored: {stored}); lower "
                                "distill.max_start_epoch/expert_epochs or rebuild the buffer")
            return Snapshot(handle.get_tensor(f"image.{epoch}"), handle.get_tensor(f"text.{epoch}"))

    def expert_metrics(self, k: int) -> dict:
        with safe_open(str(self.expert_path(k)), framework="pt") as handle:
            return json.loads(handle.metadata().get("metrics", "{}"))

    def check(self, expected: dict) -> dict:
        """Refuse a store made with other towers, layout or data; name the field that differs."""
        manifest = self.manifest()
        for key, value in expected.items():
            if key in _UNKNOWN_BEFORE and key not in manifest:
                continue
            if manifest.get(key, _BEFORE_RECORDED.get(key)) != value:
                raise UserError(f"trajectory store {str(self.dir)!r} was made with {key}="
                                f"{_short(manifest.get(key))}, this run has {key}={_short(value)}: "
                                "rebuild the buffer or point buffer.dir at a matching store")
        if manifest.get("vldistill") not in (None, __version__):
            log.warning("trajectory store %s was made by vldistill %s, this is %s; its format and "
                        "setup match, so it is used", self.dir, manifest.get("vldistill"), __version__)
        if not self.experts():
            raise UserError(f"trajectory store {str(self.dir)!r} holds no finished expert: run the buffer stage")
        for k in self.experts():
            self._check_expert(k, manifest.get("epochs", []))
        return manifest

    def _check_expert(self, k: int, epochs: list[int]) -> None:
        """An expert file must open and hold every epoch the manifest lists."""
        path = self.expert_path(k)
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = set(handle.keys())
        except (SafetensorError, OSError) as err:
            raise UserError(f"{path} is damaged ({err}): delete it and rerun `vldistill buffer` "
                            f"to train expert {k} again") from None
        missing = [e for e in epochs if f"image.{e}" not in keys or f"text.{e}" not in keys]
        if missing:
            raise UserError(f"{path} lacks epochs {missing} that the store's manifest lists (it was "
                            "made with other distill.max_start_epoch/expert_epochs): delete it and "
                            "rerun `vldistill buffer`, or set buffer.dir to a new folder")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) < 80 else text[:77] + "..."


def store_manifest(cfg: "Config", data: "PreparedData", student: DualEncoder) -> dict:
    """What a trajectory store must agree with for distillation to use it."""
    fs = FunctionalStudent(student)
    family = tower_family(cfg.model.image_tower)
    return {
        "format": STORE_FORMAT,
        "image_tower": cfg.model.image_tower,
        "image_tower_args": IMAGE_TOWERS.options(family, cfg.model.image_tower_args.get(family),
                                                 f"model.image_tower_args.{family}"),
        "text_tower": cfg.model.text_tower,
        "text_dim": data.text_dim,
        "image_size": data.dataset.image_size,
        "image_params": fs.image_layout.describe(),
        "text_params": fs.text_layout.describe(),
        "dataset": data.dataset.name,
        "dataset_fingerprint": data.dataset.fingerprint,
        "temperature": cfg.model.temperature,
        "pretrained": Path(cfg.model.pretrained_path).name if cfg.model.pretrained_path else None,
        "batchnorm": cfg.model.batchnorm,
        "frozen_backbone": cfg.model.frozen_backbone,
    }


def expert_recipe(cfg: "Config") -> dict:
    """How the experts trained, beyond what `store_manifest` requires: a store made with another
    recipe is still used (a deliberate reuse, e.g. one store for both fidelities), with a warning."""
    b = cfg.buffer
    return {"text_dropout": b.text_dropout, "drop_last": b.drop_last, "head_dropout": cfg.model.head_dropout,
            "augment": not cfg.data.no_aug, "pairs_per_epoch": b.pairs_per_epoch,
            "batch_size": b.batch_size, "lr_teacher": b.lr_teacher,
            "backbone_per_batch": b.backbone_per_batch if cfg.model.frozen_backbone else None}


def warn_if_other_recipe(manifest: dict, cfg: "Config", store_dir: Path) -> None:
    recorded = manifest.get("recipe") or {}
    differs = {k: (recorded[k], v) for k, v in expert_recipe(cfg).items() if k in recorded and recorded[k] != v}
    if differs:
        log.warning("trajectory store %s: its experts trained with %s; this run's settings say %s. "
                    "Using them as they are", store_dir, {k: a for k, (a, _) in differs.items()},
                    {k: b for k, (_, b) in differs.items()})


def epochs_to_keep(cfg: "Config") -> list[int]:
    """Snapshot epochs the buffer keeps: those distillation can read, or all (store_all_epochs)."""
    if cfg.buffer.store_all_epochs:
        return list(range(cfg.buffer.epochs + 1))
    return list(range(cfg.distill.last_epoch_used + 1))
