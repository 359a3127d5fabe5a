"""Benchmark d: what the buffer stage spends, per expert.

Throughput: expert training steps (InfoNCE, SGD, batch 128, the embedded default student) in
images/second, with caption embeddings read from the text-embedding cache (vldistill) versus
running the frozen text tower (MiniLM) on every batch's captions (the reference's way, with
BERT). Both read the same batches; the one-off cost of filling the cache is shown too.

Storage: bytes of one expert's file when only the epochs distillation can read are kept
(`buffer.store_all_epochs: false`) versus all epochs, written with the real TrajectoryStore
for the embedded default, and computed from the parameter count for the paper's Flickr30k
setting (NFNet-l0 + a head over BERT's 768-d text, 10 epochs, max_start_epoch 2, M = 1).

    python bench/bench_buffer.py
    python bench/bench_buffer.py --batches 20 --shapes-train 2000
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _machine import add_machine_args, apply_machine_args, steady_clock, time_interleaved, write_results

from vldistill.configio import load_config
from vldistill.data import prepare_data
from vldistill.buffer.store import Snapshot, TrajectoryStore, epochs_to_keep
from vldistill.models.student import FunctionalStudent, build_student
from vldistill.models.text_towers import create_text_tower
from vldistill.algorithms.training import contrastive_step, pair_batches, sgd_for_student

MB = 2**20


def throughput(args, device: torch.device, clock: str, cache_dir: Path) -> dict:
    cfg = load_config(None, [f"cache_dir={cache_dir}", f"data.shapes_train={args.shapes_train}",
                             "data.shapes_val=20", "data.shapes_test=20"])
    start = time.perf_counter()
    data = prepare_data(cfg)            # generates shapes, fills the text cache (MiniLM, once)
    fill_seconds = time.perf_counter() - start
    train = data.dataset.train
    unique = len(set(train.captions))
    tower = create_text_tower(cfg.model.text_tower, str(device))
    model = build_student(cfg.model, data.dataset.image_size, data.text_dim, seed=0).to(device)
    optimizer = sgd_for_student(model, 0.1, 0.1, 0.0, 0.0)
    batches = [b for _, b in zip(range(args.batches),
                                 pair_batches(train, data.text["train"], cfg.buffer.batch_size, seed=0))]
    images_per_pass = sum(len(idx) for idx, _, _ in batches)

    def cached() -> None:
        for _, images, texts in batches:
            contrastive_step(model, optimizer, images.to(device), texts.to(device))

    def tower_per_batch() -> None:
        for idx, images, _ in batches:
            texts = tower.encode([train.captions[i] for i in idx.tolist()], batch_size=len(idx)).clone()
            contrastive_step(model, optimizer, images.to(device), texts.to(device))
    seconds = time_interleaved({"cached": cached, "tower_per_batch": tower_per_batch}, device,
                               repeats=args.repeats, warmup=1, clock=clock)
    rates = {k: images_per_pass / v for k, v in seconds.items()}
    print(f"expert training, {images_per_pass} images in batches of {cfg.buffer.batch_size} "
          f"({cfg.model.image_tower}, {data.dataset.image_size} px; {clock} clock):")
    print(f"  text-embedding cache : {rates['cached']:8.1f} images/s")
    print(f"  text tower per batch : {rates['tower_per_batch']:8.1f} images/s "
          f"({rates['cached'] / rates['tower_per_batch']:.2f}x slower)")
    print(f"  cache fill, once     : {fill_seconds:.1f} s wall for {unique} unique captions "
          f"(with generating the dataset)")
    return {"images_per_second": rates, "seconds": seconds, "images": images_per_pass,
            "batch_size": cfg.buffer.batch_size, "text_tower": cfg.model.text_tower,
            "cache_fill_wall_seconds": fill_seconds, "unique_captions": unique}


def expert_bytes_written(cache_dir: Path) -> dict:
    """Write one expert of the embedded default both ways with the real store; file sizes."""
    cfg = load_config(None, [])
    student = FunctionalStudent(build_student(cfg.model, cfg.data.image_size, 384, seed=0))
    snap = Snapshot(*student.flat_params())
    sizes = {}
    for keep_all in (False, True):
        cfg.buffer.store_all_epochs = keep_all
        store = TrajectoryStore(cache_dir / f"store_all_{keep_all}")
        epochs = epochs_to_keep(cfg)
        path = store.write_expert(0, {e: Snapshot(snap.image.clone(), snap.text.clone()) for e in epochs},
                                  {"bench": True})
        sizes["all" if keep_all else "usable"] = {"epochs": epochs, "bytes": path.stat().st_size}
    return {"setting": f"default config: {cfg.model.image_tower}, buffer.epochs {cfg.buffer.epochs}, "
                       f"max_start_epoch {cfg.distill.max_start_epoch}, expert_epochs {cfg.distill.expert_epochs}",
            "source": "written", **sizes}


def expert_bytes_paper() -> dict:
    """The Flickr30k paper setting, from parameter counts (the tower is built on the meta device)."""
    cfg = load_config(None, ["model.image_tower=timm:nfnet_l0", "data.image_size=224",
                             "buffer.epochs=10", "distill.max_start_epoch=2", "distill.expert_epochs=1"])
    with torch.device("meta"):
        student = FunctionalStudent(build_student(cfg.model, 224, 768))
    per_epoch = 4 * (student.image_layout.numel + student.text_layout.numel)
    usable, everything = epochs_to_keep(cfg), list(range(cfg.buffer.epochs + 1))
    return {"setting": "Flickr30k paper: timm:nfnet_l0 + head over 768-d BERT, buffer.epochs 10, "
                       "max_start_epoch 2, expert_epochs 1", "source": "computed from parameter count",
            "usable": {"epochs": usable, "bytes": per_epoch * len(usable)},
            "all": {"epochs": everything, "bytes": per_epoch * len(everything)}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=8, help="batches of 128 per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes-train", type=int, default=1000)
    add_machine_args(parser)
    args = parser.parse_args(argv)
    device = apply_machine_args(args)
    clock = steady_clock(device)
    with tempfile.TemporaryDirectory() as tmp:
        speed = throughput(args, device, clock, Path(tmp))
        storage = [expert_bytes_written(Path(tmp)), expert_bytes_paper()]
    print("bytes per expert, usable epochs only vs all epochs:")
    for row in storage:
        usable, everything = row["usable"], row["all"]
        print(f"  {row['setting']} ({row['source']}):\n"
              f"    usable epochs {usable['epochs']}: {usable['bytes'] / MB:.1f} MB;  all "
              f"{len(everything['epochs'])} epochs: {everything['bytes'] / MB:.1f} MB "
              f"({everything['bytes'] / usable['bytes']:.1f}x)")
    path = write_results("buffer", {"throughput": speed, "storage": storage}, device,
                         vars(args) | {"clock": clock})
    print(f"wrote {path}")
    return {"throughput": speed, "storage": storage}


if __name__ == "__main__":
    main()
