"""Benchmark b: peak memory of one matching iteration as T grows.

TESLA (`vldistill.algorithms.matching.tesla_match`) keeps one step's graph whatever T is; the naive
unroll (MTT form) keeps all T. Goal: TESLA's peak grows by at most 15% from T = 4 to T = 32,
the unroll's linearly. The peak is the tensor memory the iteration allocates beyond what was
live before it (the set, the student, the expert snapshots): torch.cuda.max_memory_allocated
on a GPU, torch's CPU allocator events (profiler, profile_memory=True) on a CPU. Next to it,
vldistill.distill.memory's pre-flight estimate of the whole distillation for the same shapes.

    python bench/bench_memory.py                          # convnet (embedded default), T = 4, 16, 32
    python bench/bench_memory.py --towers convnet,timm:nfnet_l0 --unrolled-max-t 4
"""
from __future__ import annotations

import argparse

from _machine import add_machine_args, apply_machine_args, peak_bytes, write_results
from _workload import METHODS, TEXT_DIM, make_workload
from bench_matching import TOWERS

from vldistill.distill.memory import estimate_distill_memory

GOAL = 0.15
MB = 2**20


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--towers", default="convnet")
    parser.add_argument("--steps", default="4,16,32")
    parser.add_argument("--unrolled-max-t", type=int, default=32,
                        help="skip the unroll above this T (its memory grows without bound)")
    parser.add_argument("--results-name", default="memory", help="bench/results/NAME.json")
    add_machine_args(parser)
    args = parser.parse_args(argv)
    device = apply_machine_args(args)

    rows = []
    print("MB above what was resident before the iteration; 'tesla total' adds the resident tensors")
    print(f"{'tower':<15}{'T':>4}{'resident':>10}{'tesla':>9}{'unroll':>9}{'tesla total':>13}"
          f"{'estimate':>10}")
    for tower in args.towers.split(","):
        size, n_pairs, batch, kwargs = TOWERS[tower]
        work = make_workload(tower, size, n_pairs, batch, device, **kwargs)
        estimate = estimate_distill_memory(work.student.model, n_pairs, batch, size, TEXT_DIM,
                                           sim_params=sum(p.numel() for p in work.similarity.parameters()))
        for t in (int(s) for s in args.steps.split(",")):
            batches = work.batches(t)
            METHODS["tesla"](work, batches)             # warm-up: lazy buffers, first-call caches
            resident = work.resident_bytes()
            peaks = {"tesla": peak_bytes(lambda: METHODS["tesla"](work, batches), device)}
            if t <= args.unrolled_max_t:
                peaks["unrolled"] = peak_bytes(lambda: METHODS["unrolled"](work, batches), device)
            rows.append({"tower": tower, "T": t, "image_size": size, "mini_batch": batch,
                         "n_pairs": n_pairs, "peak_bytes": peaks, "resident_bytes": resident,
                         "tesla_total_bytes": resident + peaks["tesla"], "estimate_bytes": estimate.total,
                         "estimate": estimate.parts})
            unrolled = f"{peaks['unrolled'] / MB:>9.1f}" if "unrolled" in peaks else f"{'-':>9}"
            print(f"{tower:<15}{t:>4}{resident / MB:>10.1f}{peaks['tesla'] / MB:>9.1f}{unrolled}"
                  f"{(resident + peaks['tesla']) / MB:>13.1f}{estimate.total / MB:>10.1f}")
        mine = [r for r in rows if r["tower"] == tower]
        growth = mine[-1]["peak_bytes"]["tesla"] / mine[0]["peak_bytes"]["tesla"] - 1
        print(f"{tower}: TESLA peak grows {100 * growth:+.1f}% from T={mine[0]['T']} to "
              f"T={mine[-1]['T']} (goal <= {100 * GOAL:.0f}%: {'met' if growth <= GOAL else 'NOT met'})")
        for r in mine:
            r["tesla_growth_from_first"] = r["peak_bytes"]["tesla"] / mine[0]["peak_bytes"]["tesla"] - 1
    path = write_results(args.results_name, rows, device, vars(args) | {
        "measure": "cuda max_memory_allocated" if device.type == "cuda"
        else "torch CPU allocator events (torch.profiler profile_memory=True), peak above start"})
    print(f"wrote {path}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
