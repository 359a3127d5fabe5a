"""Benchmark f: evaluation seeds one after another, or as one batched ensemble?

An evaluation trains `eval.num_eval` fresh students per method on the same set. They could
train together: their parameters stacked (`torch.func.stack_module_state`) and one
`vmap(grad(loss))` computing every student's step at once, which pays off where one student's
step leaves the device idle (a GPU). This measures, side by side on the same batches, K student
steps run one after another against the same K steps as one vmapped call, for the demo's
towers. Evaluation stays sequential unless the batched form is faster here.

    python bench/bench_ensemble.py                   # --seeds 3 --batch 100 --image-size 32
    python bench/bench_ensemble.py --device cuda
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch.func import functional_call, grad, stack_module_state, vmap

from _machine import add_machine_args, apply_machine_args, steady_clock, time_interleaved, write_results

from vldistill.algorithms.losses import soft_contrastive_loss
from vldistill.models.image_towers import create_image_tower
from vldistill.models.student import DualEncoder

TOWERS = {"convnet": dict(), "timm:efficientnet_lite0": dict(pretrained_path="imagenet")}


def compare(tower: str, args, device: torch.device, clock: str) -> dict:
    torch.manual_seed(0)
    students = [DualEncoder(create_image_tower(tower, args.image_size, **TOWERS[tower]), args.text_dim,
                            batchnorm="frozen").to(device) for _ in range(args.seeds)]
    x = torch.randn(args.seeds, args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randn(args.seeds, args.batch, args.text_dim, device=device)
    target = torch.eye(args.batch, device=device)

    def one_after_another() -> None:
        for k, student in enumerate(students):
            student.zero_grad()
            soft_contrastive_loss(student(x[k], y[k]), target, "infonce").backward()

    params, buffers = stack_module_state(students)
    skeleton = copy.deepcopy(students[0]).to("meta")

    def loss(p, b, xs, ys):
        return soft_contrastive_loss(functional_call(skeleton, (p, b), (xs, ys)), target, "infonce")
    step = vmap(grad(loss))

    def ensemble() -> None:
        step(params, buffers, x, y)
    seconds = time_interleaved({"one_after_another": one_after_another, "ensemble": ensemble}, device,
                               repeats=args.repeats, warmup=1, clock=clock)
    ratio = seconds["one_after_another"] / seconds["ensemble"]
    print(f"  {tower:26s} {args.seeds} students x batch {args.batch} at {args.image_size} px: "
          f"one after another {seconds['one_after_another']:.3f} s, ensemble {seconds['ensemble']:.3f} s "
          f"-> ensemble {ratio:.2f}x as fast")
    return {"seconds": seconds, "ensemble_speedup": ratio}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="students trained together (eval.num_eval)")
    parser.add_argument("--batch", type=int, default=100, help="pairs per step (a whole 100-pair set)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--text-dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--towers", default=",".join(TOWERS))
    add_machine_args(parser)
    args = parser.parse_args(argv)
    device = apply_machine_args(args)
    clock = steady_clock(device)
    print(f"evaluation students, one step each ({clock} clock):")
    results = {tower: compare(tower, args, device, clock) for tower in args.towers.split(",")}
    path = write_results("ensemble", results, device, vars(args) | {"clock": clock})
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
