"""Benchmark c: the learned similarity at scale, lowrank (LoRS) against full.

Part 1, per similarity and N: parameter bytes (and with gradient and momentum, as distill
holds them), and the time of one mini-batch block S_I: build it from the rows of I, backprop a
cotangent into it and scatter the gradient into the rows (what every matching step does); the
first block of an iteration also creates the similarity's gradient buffers.
`full` at sizes whose N x N matrices would not fit in memory is reported, not allocated.

Part 2: one whole distill iteration (TESLA matching + the SGD-momentum update of images,
texts and similarity, as the Distiller does) for N = 1,000 / 10,000 / 50,000 synthetic pairs.
The student steps and the similarity blocks do not depend on N; what does is touching every
synthetic image once per iteration: creating the gradient buffers (zeros) and the dense
momentum update (kept dense: a lazy update would change the optimizer's results).

    python bench/bench_similarity.py                       # N = 10,000 and 50,000, rank 40
    python bench/bench_similarity.py --sizes 10000,100000 --iteration-sizes 1000,10000
"""
from __future__ import annotations

import argparse

import torch

from _machine import add_machine_args, apply_machine_args, steady_clock, time_interleaved, write_results
from _workload import make_workload, tesla_iteration

from vldistill.distill.memory import device_memory
from vldistill.algorithms.similarity import build_similarity

STATE_COPIES = 3            # parameter, gradient, momentum
MB = 2**20


def parameter_count(kind: str, n: int, rank: int) -> int:
    return {"lowrank": n * (2 * rank + 1), "full": n * n, "identity": 0}[kind]


def block_seconds(kind: str, n: int, rank: int, batch: int, device: torch.device,
                  clock: str) -> dict[str, float]:
    """Seconds per mini-batch block: gather the rows of I, build (b, b), backprop a cotangent,
    scatter the gradient into the rows. `first`: an iteration's first block, which also creates
    the gradient buffers (O(N r) for lowrank, O(N^2) for full); `next`: any later block."""
    sim = build_similarity(kind, n, rank, alpha=3.0).to(device)
    generator = torch.Generator().manual_seed(0)
    cotangent = torch.randn(batch, batch, device=device)

    def block() -> None:
        idx = torch.randperm(n, generator=generator)[:batch].to(device)
        rows = [p.detach().requires_grad_(True) for p in sim.params(idx)]
        matrix = sim.matrix_from(rows, batch)
        sim.add_grad(idx, list(torch.autograd.grad(matrix, rows, grad_outputs=cotangent)))

    def first() -> None:
        sim.zero_grad(set_to_none=True)
        block()
    return time_interleaved({"first": first, "next": block}, device, repeats=20, warmup=2, clock=clock)


def iteration_seconds(kind: str, n: int, args, device: torch.device, clock: str) -> dict[str, float]:
    """One distill iteration at N pairs, in its two parts: the matching (TESLA, including the
    gradient buffers of images, texts and similarity) and the SGD-momentum update."""
    work = make_workload("convnet", 32, n, args.mini_batch, device, sim_kind=kind, rank=args.rank,
                         width=64, depth=3)
    optimizer = torch.optim.SGD([{"params": [work.images]}, {"params": [work.texts]},
                                 {"params": list(work.similarity.parameters())}], lr=0.01, momentum=0.5)
    batches = work.batches(args.steps)
    seconds = time_interleaved({"matching": lambda: tesla_iteration(work, batches),
                                "update": optimizer.step}, device,
                               repeats=args.repeats, warmup=1, clock=clock)
    return seconds | {"iteration": seconds["matching"] + seconds["update"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000", help="N for the block timings")
    parser.add_argument("--iteration-sizes", default="1000,10000,50000", help="N for whole iterations")
    parser.add_argument("--rank", type=int, default=40)
    parser.add_argument("--mini-batch", type=int, default=20)
    parser.add_argument("--steps", type=int, default=8, help="T of the distill iterations")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-fraction", type=float, default=0.5,
                        help="allocate `full` only when its state takes at most this share of free memory")
    add_machine_args(parser)
    args = parser.parse_args(argv)
    device = apply_machine_args(args)
    clock = steady_clock(device)
    available = device_memory(device)[0] or 0

    blocks = []
    print(f"mini-batch block S_I (b = {args.mini_batch}), rank {args.rank}; seconds: {clock} clock")
    print(f"{'kind':<9}{'N':>8}{'params MB':>12}{'+grad+mom MB':>14}{'ms first block':>16}"
          f"{'ms next block':>15}")
    for n in (int(s) for s in args.sizes.split(",")):
        for kind in ("lowrank", "full"):
            nbytes = 4 * parameter_count(kind, n, args.rank)
            fits = STATE_COPIES * nbytes <= args.memory_fraction * available
            seconds = block_seconds(kind, n, args.rank, args.mini_batch, device, clock) if fits else None
            blocks.append({"kind": kind, "n": n, "rank": args.rank, "param_bytes": nbytes,
                           "state_bytes": STATE_COPIES * nbytes, "block_seconds": seconds})
            shown = (f"{1000 * seconds['first']:>16.3f}{1000 * seconds['next']:>15.3f}"
                     if seconds is not None else f"{'(too big)':>16}")
            print(f"{kind:<9}{n:>8}{nbytes / MB:>12.1f}{STATE_COPIES * nbytes / MB:>14.1f}{shown}")

    iterations = []
    print(f"\none distill iteration (convnet, 32 px, T = {args.steps}, mini-batch {args.mini_batch}); "
          f"seconds: {clock} clock")
    print(f"{'kind':<9}{'N':>8}{'matching s':>12}{'update s':>10}{'iteration s':>13}")
    for n in (int(s) for s in args.iteration_sizes.split(",")):
        for kind in ("lowrank", "full"):
            if STATE_COPIES * 4 * parameter_count(kind, n, args.rank) > args.memory_fraction * available:
                print(f"{kind:<9}{n:>8}{'(too big)':>12}")
                continue
            seconds = iteration_seconds(kind, n, args, device, clock)
            iterations.append({"kind": kind, "n": n, "seconds": seconds})
            print(f"{kind:<9}{n:>8}{seconds['matching']:>12.2f}{seconds['update']:>10.3f}"
                  f"{seconds['iteration']:>13.2f}")
    path = write_results("similarity", {"blocks": blocks, "iterations": iterations}, device,
                         vars(args) | {"clock": clock})
    print(f"wrote {path}")
    return {"blocks": blocks, "iterations": iterations}


if __name__ == "__main__":
    main()
