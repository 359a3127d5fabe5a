"""Benchmark a: what one distill iteration costs, in units of plain training steps.

For each tower and T, three things run in turns on the same mini-batches:
T plain SGD steps of the student, one TESLA iteration (`vldistill.algorithms.matching.tesla_match`) and
one naive unroll that keeps the whole graph (the MTT form VL-distill uses). Goal: TESLA costs
at most 4x the T plain steps.

    python bench/bench_matching.py                    # convnet T=8,16,32; nfnet_l0 T=8 without the unroll
    python bench/bench_matching.py --full             # nfnet_l0 at every T, with the unroll (long, GBs)
    python bench/bench_matching.py --towers convnet --steps 8 --repeats 5
"""
from __future__ import annotations

import argparse
from functools import partial

from _machine import add_machine_args, apply_machine_args, steady_clock, time_interleaved, write_results
from _workload import METHODS, make_workload

GOAL = 4.0

# tower -> (image size, n_pairs, mini-batch, extra tower kwargs); convnet is the embedded default
TOWERS = {
    "convnet": (32, 100, 20, {"width": 64, "depth": 3}),
    "timm:nfnet_l0": (224, 20, 2, {}),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--towers", default="convnet,timm:nfnet_l0")
    parser.add_argument("--steps", default="8,16,32", help="T values for the convnet")
    parser.add_argument("--large-steps", default="8", help="T values for towers other than convnet")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nfnet-batch", type=int, default=TOWERS["timm:nfnet_l0"][2])
    parser.add_argument("--no-unrolled", action="store_true", help="skip the naive unroll")
    parser.add_argument("--full", action="store_true", help="large towers at every --steps value")
    parser.add_argument("--results-name", default="matching", help="bench/results/NAME.json")
    add_machine_args(parser)
    args = parser.parse_args(argv)
    device = apply_machine_args(args)

    rows, clock = [], steady_clock(device)
    print(f"seconds: {clock} clock (median of turns)")
    print(f"{'tower':<15}{'T':>4}{'plain s':>10}{'tesla s':>10}{'unroll s':>10}"
          f"{'tesla/plain':>13}{'unroll/plain':>14}  goal <= {GOAL:g}x")
    for tower in args.towers.split(","):
        size, n_pairs, batch, kwargs = TOWERS[tower]
        if tower == "timm:nfnet_l0":
            batch = args.nfnet_batch
        large = tower != "convnet"
        steps = args.steps if (not large or args.full) else args.large_steps
        work = make_workload(tower, size, n_pairs, batch, device, **kwargs)
        for t in (int(s) for s in steps.split(",")):
            batches = work.batches(t)
            skip_unrolled = args.no_unrolled or (large and not args.full)   # GBs of graph on a CPU
            methods = {k: partial(fn, work, batches) for k, fn in METHODS.items()
                       if not (k == "unrolled" and skip_unrolled)}
            repeats = 1 if large else args.repeats
            seconds = time_interleaved(methods, device, repeats=repeats, warmup=1, clock=clock)
            row = {"tower": tower, "T": t, "image_size": size, "mini_batch": batch,
                   "n_pairs": n_pairs, "seconds": seconds, "clock": clock, "repeats": repeats,
                   "tesla_over_plain": seconds["tesla"] / seconds["plain"],
                   "unrolled_over_plain": seconds.get("unrolled", float("nan")) / seconds["plain"]}
            row["goal_met"] = row["tesla_over_plain"] <= GOAL
            rows.append(row)
            print(f"{tower:<15}{t:>4}{seconds['plain']:>10.2f}{seconds['tesla']:>10.2f}"
                  f"{seconds.get('unrolled', float('nan')):>10.2f}{row['tesla_over_plain']:>12.2f}x"
                  f"{row['unrolled_over_plain']:>13.2f}x  {'met' if row['goal_met'] else 'NOT met'}")
    path = write_results(args.results_name, rows, device, vars(args))
    print(f"wrote {path}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
