"""Benchmark: what RepBlend's frozen backbone saves against LoRS, per expert epoch and per
distillation iteration, measured side by side (in turns) on the same data and mini-batches.

Both use the same pretrained tower (timm:efficientnet_lite0, ImageNet weights, batch norm on
its running statistics) on the shapes data:

- expert epoch (InfoNCE, SGD, batch 128, every training image once): LoRS fine-tunes the whole
  tower on the images; RepBlend trains the image and text heads on the frozen tower's cached
  features (vldistill), or runs the frozen tower on every batch (the reference's way,
  buffer.backbone_per_batch). Filling the feature cache, once, is timed apart.
- distillation iteration (TESLA, T steps of mini-batch 20, WBCE, lowrank S): LoRS matches the
  tower's trajectory; RepBlend the heads', with the pixels' gradient through the frozen tower,
  with and without blending.

    python bench/bench_repblend.py
    python bench/bench_repblend.py --shapes-train 2000 --steps 8 --repeats 5
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from _machine import add_machine_args, apply_machine_args, steady_clock, time_interleaved, write_results

from vldistill.configio import load_config
from vldistill.data import prepare_data
from vldistill.algorithms.matching import MatchOptions, sample_batches, tesla_match
from vldistill.evaluation.methods import method_config
from vldistill.models.student import FunctionalStudent, build_student
from vldistill.algorithms.repblend import real_data_for
from vldistill.algorithms.similarity import build_similarity
from vldistill.algorithms.training import sgd_for_student, train_epoch_on_pairs

TOWER = ["model.image_tower=timm:efficientnet_lite0", "model.pretrained_path=imagenet",
         "model.batchnorm=frozen", "data.image_size=32"]


def configs(args, cache_dir: Path) -> dict:
    base = load_config(None, [f"cache_dir={cache_dir}", *TOWER, f"data.shapes_train={args.shapes_train}",
                              "data.shapes_val=100", "data.shapes_test=100", "buffer.pairs_per_epoch=images",
                              "distill.loss=wbce", f"distill.syn_steps={args.steps}", "distill.mini_batch=20"])
    return {"lors": base, "repblend": method_config(base, "repblend"),
            "repblend-noblend": method_config(base, "repblend-noblend")}


def expert_epochs(args, cfgs: dict, data, device: torch.device, clock: str) -> dict:
    """One expert epoch of each way, in turns; the feature cache filled beforehand (timed)."""
    runs = {}
    for name, cfg, per_batch in (("lors", cfgs["lors"], False), ("repblend", cfgs["repblend"], False),
                                 ("repblend, backbone per batch", cfgs["repblend"], True)):
        cfg = replace(cfg, buffer=replace(cfg.buffer, backbone_per_batch=per_batch))
        model = build_student(cfg.model, 32, data.text_dim, seed=0).to(device)
        start = time.perf_counter()
        split = real_data_for(model, data, cfg, device, (), train=True).dataset.train
        fill = time.perf_counter() - start
        optimizer = sgd_for_student(model, 0.1, 0.1, 0.0, 0.0)
        runs[name] = (fill, lambda m=model, o=optimizer, s=split: train_epoch_on_pairs(
            m, o, s, data.text["train"], 128, 0, device, mode="images"))
    seconds = time_interleaved({k: fn for k, (_, fn) in runs.items()}, device, args.repeats, 1, clock)
    fill = runs["repblend"][0]
    print(f"expert epoch, {data.dataset.train.n_images} images, batch 128 ({clock} clock):")
    for name, s in seconds.items():
        print(f"  {name:<30}{s:8.2f} s   ({seconds['lors'] / s:5.1f}x faster than lors)")
    print(f"  feature cache fill, once      {fill:8.2f} s wall (train split)")
    return {"seconds": seconds, "feature_cache_fill_wall_seconds": fill,
            "images": data.dataset.train.n_images}


def distill_iterations(args, cfgs: dict, data, device: torch.device, clock: str) -> dict:
    """One TESLA iteration of each method, in turns, on the same set and mini-batches."""
    n = args.n_pairs
    images, texts, _ = data.real_pairs(n, torch.Generator().manual_seed(0))
    batches = [b.to(device) for b in sample_batches(n, 20, args.steps, torch.Generator().manual_seed(1))]
    step_seeds = list(range(args.steps))
    runs, sizes = {}, {}
    for name, cfg in cfgs.items():
        student = FunctionalStudent(build_student(cfg.model, 32, data.text_dim, seed=0).to(device))
        x = images.to(device).requires_grad_(True)
        y = texts.to(device).requires_grad_(True)
        sim = build_similarity("lowrank", n, 10, 3.0).to(device)
        start = student.flat_params()
        target = tuple(p + 1e-3 * torch.randn_like(p) for p in start)
        sizes[name] = {"phi": student.image_layout.numel, "psi": student.text_layout.numel}

        def iteration(s=student, x=x, y=y, sim=sim, start=start, target=target) -> None:
            for t in (x, y, *sim.parameters()):
                t.grad = None
            tesla_match(s, x, y, sim, 0.1, 0.1, start, target, batches, MatchOptions("wbce"), step_seeds)
        runs[name] = iteration
    seconds = time_interleaved(runs, device, args.repeats, 1, clock)
    print(f"distillation iteration, T = {args.steps}, mini-batch 20, {n} pairs ({clock} clock):")
    for name, s in seconds.items():
        print(f"  {name:<18}{s:8.3f} s   ({seconds['lors'] / s:5.1f}x faster than lors)  "
              f"phi {sizes[name]['phi'] / 1e6:.2f}M + psi {sizes[name]['psi'] / 1e6:.2f}M parameters")
    return {"seconds": seconds, "parameters": sizes, "T": args.steps, "mini_batch": 20, "n_pairs": n}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes-train", type=int, default=1000)
    parser.add_argument("--n-pairs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=8, help="T, student steps per iteration")
    parser.add_argument("--repeats", type=int, default=3)
    add_machine_args(parser)
    args = parser.parse_args(argv)
    device = apply_machine_args(args)
    clock = steady_clock(device)
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = configs(args, Path(tmp))
        data = prepare_data(cfgs["lors"])
        results = {"expert_epoch": expert_epochs(args, cfgs, data, device, clock),
                   "distill_iteration": distill_iterations(args, cfgs, data, device, clock),
                   "tower": "timm:efficientnet_lite0 (imagenet, batchnorm frozen), 32 px, shapes"}
    path = write_results("repblend", results, device, vars(args) | {"clock": clock})
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
