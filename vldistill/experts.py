"""The buffer stage: train expert students on the real data and store their trajectories.

Each expert is a fresh student trained with plain InfoNCE and SGD; after every epoch its
image tower (phi) and text head (psi) are snapshotted as flat vectors. Only the epochs that
distillation can read (0 .. max_start_epoch - 1 + expert_epochs) are kept unless
`buffer.store_all_epochs`. The store is a folder:

    manifest.json            towers, parameter layout, dims, dataset fingerprint, version
    expert_000.safetensors   tensors image.E / text.E (flat float32) for each kept epoch E

Experts are written atomically, so a crashed buffer never leaves a half-written expert, and
a restarted one skips the experts already there. With torchrun, each rank trains its share.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from . import __version__, distributed
from .accel import prepare_student
from .errors import MissingFileError, UserError
from .io import read_json, write_json, write_tensors
from .models.student import DualEncoder, FunctionalStudent, build_student
from .training import retrieval_metrics, sgd_for_student, train_epoch_on_pairs

log = logging.getLogger(__name__)

STORE_FORMAT = 1


@dataclass
class Snapshot:
    """Flat parameters of one expert epoch: image tower phi and text head psi."""

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
            if manifest.get(key) != value:
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


def store_manifest(cfg, data, student: DualEncoder) -> dict:
    """What a trajectory store must agree with for distillation to use it."""
    fs = FunctionalStudent(student)
    return {
        "format": STORE_FORMAT,
        "image_tower": cfg.model.image_tower,
        "convnet": [cfg.model.convnet_width, cfg.model.convnet_depth]
        if cfg.model.image_tower == "convnet" else None,
        "text_tower": cfg.model.text_tower,
        "text_dim": data.text_dim,
        "image_size": data.dataset.image_size,
        "image_params": fs.image_layout.describe(),
        "text_params": fs.text_layout.describe(),
        "dataset": data.dataset.name,
        "dataset_fingerprint": data.dataset.fingerprint,
        "temperature": cfg.model.temperature,
    }


def epochs_to_keep(cfg) -> list[int]:
    if cfg.buffer.store_all_epochs:
        return list(range(cfg.buffer.epochs + 1))
    return list(range(cfg.distill.last_epoch_used + 1))


def train_expert(k: int, cfg, data, device: torch.device, store: TrajectoryStore) -> dict:
    """Train expert k (seeded by cfg.seed and k), store its kept snapshots, return its metrics."""
    seed = cfg.seed * 10_000 + k
    model = prepare_student(build_student(cfg.model, data.dataset.image_size, data.text_dim, seed=seed),
                            device, cfg.amp)
    fs = FunctionalStudent(model)
    optimizer = sgd_for_student(model, cfg.buffer.lr_teacher, cfg.buffer.lr_teacher,
                                cfg.buffer.momentum, cfg.buffer.weight_decay)
    keep = set(epochs_to_keep(cfg))
    snapshots = {0: Snapshot(*fs.flat_params())}
    history = []
    per_epoch = (data.dataset.train.n_images if cfg.buffer.pairs_per_epoch == "images"
                 else len(data.dataset.train.caption_image))
    steps = -(-per_epoch // cfg.buffer.batch_size)
    start = time.time()
    with tqdm(total=steps * cfg.buffer.epochs, desc=f"expert {k}", unit="step", leave=False) as bar:
        for epoch in range(1, cfg.buffer.epochs + 1):
            loss = train_epoch_on_pairs(model, optimizer, data.dataset.train, data.text["train"],
                                        cfg.buffer.batch_size, seed * 100 + epoch, device,
                                        cfg.data.num_workers, bar,
                                        cfg.buffer.pairs_per_epoch)
            val = retrieval_metrics(model, data.dataset.val, data.text["val"], device)
            history.append({"epoch": epoch, "loss": loss, **val})
            log.info("expert %d epoch %d: loss %.3f, val r_mean %.2f (IR@1 %.1f, TR@1 %.1f)",
                     k, epoch, loss, val["r_mean"], val["img_r1"], val["txt_r1"])
            if epoch in keep:
                snapshots[epoch] = Snapshot(*fs.flat_params())
    if len(history) > 1 and history[-1]["r_mean"] <= history[0]["r_mean"]:
        log.warning("expert %d did not improve after its first epoch (val r_mean %.2f -> %.2f): "
                    "check buffer.lr_teacher, the captions and the image normalization",
                    k, history[0]["r_mean"], history[-1]["r_mean"])
    metrics = {"history": history, "seconds": time.time() - start, "seed": seed}
    path = store.write_expert(k, snapshots, metrics)
    log.info("expert %d stored: epochs %s, %.1f MB", k, sorted(snapshots), path.stat().st_size / 2**20)
    return metrics


def run_buffer(cfg, data, device: torch.device, store: TrajectoryStore, rank: int = 0,
               world_size: int = 1) -> TrajectoryStore:
    """Train the experts this process owns (k = rank, rank + world, ...) that are not stored yet."""
    manifest = store_manifest(cfg, data, build_student(cfg.model, data.dataset.image_size,
                                                       data.text_dim, seed=0))
    if store.manifest_path.is_file() and store.experts():
        store.check(manifest)       # a restart adds experts only to a store of the same setup
    if rank == 0:
        store.write_manifest(manifest | {"vldistill": __version__, "epochs": epochs_to_keep(cfg),
                                         "lr_teacher": cfg.buffer.lr_teacher})
    distributed.barrier()       # under torchrun: no rank goes on before the manifest exists
    done = set(store.experts())
    mine = [k for k in range(rank, cfg.buffer.num_experts, world_size) if k not in done]
    if done:
        log.info("buffer: %d experts already stored, %d to train here", len(done), len(mine))
    for k in tqdm(mine, desc="buffer", unit="expert", disable=len(mine) < 2):
        train_expert(k, cfg, data, device, store)
    return store
