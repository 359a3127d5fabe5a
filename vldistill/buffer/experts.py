"""The buffer stage: train expert students on the real data and store their trajectories.

Each expert is a fresh student trained with plain InfoNCE and SGD; after every epoch its
image tower (phi; the image head over a frozen backbone) and text head (psi) are snapshotted
as flat vectors into the trajectory store (`vldistill.buffer.store`). Over a frozen backbone
the experts read its cached features of the real images (`vldistill.algorithms.repblend`) unless
buffer.backbone_per_batch. Only the epochs that distillation can read
(0 .. max_start_epoch - 1 + expert_epochs) are kept unless `buffer.store_all_epochs`. A
restarted buffer skips the experts already stored. With torchrun, each rank trains its share.
"""
from __future__ import annotations

import logging
import time

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..runtime import distributed
from ..models.accel import prepare_student
from ..config import Config
from ..data import PreparedData
from ..errors import UserError
from ..models.student import FunctionalStudent, build_student
from ..algorithms.repblend import real_data_for
from ..runtime.seeds import derive_seed
from ..algorithms.training import retrieval_metrics, sgd_for_student, train_epoch_on_pairs
from .store import Snapshot, TrajectoryStore, epochs_to_keep, expert_recipe, store_manifest

log = logging.getLogger(__name__)


def train_expert(k: int, cfg: Config, data: PreparedData, device: torch.device,
                 store: TrajectoryStore) -> dict:
    """Train expert k (seeded by cfg.seed and k), store its kept snapshots, return its metrics."""
    seed = derive_seed(cfg.seed, "expert-init", k)
    model = prepare_student(build_student(cfg.model, data.dataset.image_size, data.text_dim, seed=seed),
                            device, cfg.amp)
    fs = FunctionalStudent(model)
    data = real_data_for(model, data, cfg, device, ("val",), train=True)
    optimizer = sgd_for_student(model, cfg.buffer.lr_teacher, cfg.buffer.lr_teacher,
                                cfg.buffer.momentum, cfg.buffer.weight_decay)
    keep = set(epochs_to_keep(cfg))
    text_features = noisy_text_features(cfg, data)      # None: the cached clean embeddings
    snapshots = {0: Snapshot(*fs.flat_params())}
    history = []
    per_epoch = (data.dataset.train.n_images if cfg.buffer.pairs_per_epoch == "images"
                 else len(data.dataset.train.caption_image))
    steps = (per_epoch // cfg.buffer.batch_size if cfg.buffer.drop_last
             else -(-per_epoch // cfg.buffer.batch_size))
    start = time.time()
    with tqdm(total=steps * cfg.buffer.epochs, desc=f"expert {k}", unit="step", leave=False) as bar:
        for epoch in range(1, cfg.buffer.epochs + 1):
            loss = train_epoch_on_pairs(model, optimizer, data.dataset.train, data.text["train"],
                                        batch_size=cfg.buffer.batch_size,
                                        seed=derive_seed(cfg.seed, "expert-epoch", k, epoch), device=device,
                                        num_workers=cfg.data.num_workers, progress=bar,
                                        mode=cfg.buffer.pairs_per_epoch, drop_last=cfg.buffer.drop_last,
                                        text_features=text_features)
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


def noisy_text_features(cfg: Config, data: PreparedData):
    """buffer.text_dropout: caption indices -> the text tower's features in train mode (dropout
    on), computed per batch as the reference's experts do; None: the cached clean features."""
    if not cfg.buffer.text_dropout:
        return None
    if data.tower is None:
        raise UserError("buffer.text_dropout needs the text tower itself (prepare the data with "
                        "vldistill.data.prepare_data)")
    captions = data.dataset.train.captions

    def features(idx: torch.Tensor) -> torch.Tensor:
        return data.tower.encode([captions[i] for i in idx.tolist()], len(idx), train=True)
    return features


def run_buffer(cfg: Config, data: PreparedData, device: torch.device, store: TrajectoryStore, rank: int = 0,
               world_size: int = 1) -> TrajectoryStore:
    """Train the experts this process owns (k = rank, rank + world, ...) that are not stored yet."""
    manifest = store_manifest(cfg, data, build_student(cfg.model, data.dataset.image_size,
                                                       data.text_dim, seed=0))
    if store.manifest_path.is_file() and store.experts():
        store.check(manifest)       # a restart adds experts only to a store of the same setup
    if rank == 0:
        store.write_manifest(manifest | {"vldistill": __version__, "epochs": epochs_to_keep(cfg),
                                         "recipe": expert_recipe(cfg)})
    distributed.barrier()       # under torchrun: no rank goes on before the manifest exists
    done = set(store.experts())
    mine = [k for k in range(rank, cfg.buffer.num_experts, world_size) if k not in done]
    if done:
        log.info("buffer: %d experts already stored, %d to train here", len(done), len(mine))
    for k in tqdm(mine, desc="buffer", unit="expert", disable=len(mine) < 2):
        train_expert(k, cfg, data, device, store)
    return store
