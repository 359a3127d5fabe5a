"""What every benchmark prints and records: the machine it ran on, and where results go.

A figure without its machine is not comparable, so each bench script starts its output with
`describe()` and writes `{"machine": ..., "results": ...}` through `write_results`.
Used by every bench/bench_*.py (import as `from _machine import ...`; the scripts run from bench/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else platform)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model, cores, torch threads, torch version and device (with GPU name and memory)."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    return info


def describe(device: torch.device | str = "cpu") -> str:
    """One line for the top of a benchmark's output."""
    m = machine(device)
    gpu = f", {m['gpu']} ({m['gpu_memory_gib']} GiB)" if "gpu" in m else ""
    return (f"machine: {m['cpu']} ({m['cpu_count']} cores), torch {m['torch']} with "
            f"{m['threads']} threads, device {m['device']}{gpu}")


def write_results(name: str, results: Any, device: torch.device | str = "cpu",
                  settings: dict[str, Any] | None = None) -> Path:
    """bench/results/NAME.json with the machine, the settings and the figures."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": machine(device), "settings": settings or {}, "results": results}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def add_machine_args(parser: argparse.ArgumentParser, threads: int = 1) -> None:
    """--device and --threads, the same in every benchmark."""
    parser.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    parser.add_argument("--threads", type=int, default=threads,
                        help="torch threads (default %(default)s: ratios are steadier on a shared CPU)")


def apply_machine_args(args: argparse.Namespace) -> torch.device:
    """Set the thread count and resolve the device; print the machine line."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    print(describe(device))
    return device


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work so a timer sees it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def steady_clock(device: torch.device | str) -> str:
    """The clock that ratios are read from: this process's CPU time on a CPU, wall time on a GPU.

    On a CPU shared with other jobs, wall time measures the scheduler as much as the code; the
    CPU seconds this process used (single-threaded: the work done) do not depend on who else
    runs. GPU work is not in the process's CPU time, so GPUs use the wall clock.
    """
    return "cpu" if torch.device(device).type == "cpu" else "wall"


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device | str = "cpu",
                     repeats: int = 3, warmup: int = 1, clock: str = "wall") -> dict[str, float]:
    """Median seconds (`clock`: wall or this process's cpu) of each function, run in turns
    (a, b, c, a, b, c, ...).

    Taking turns makes a slowdown of a shared machine hit every candidate alike, so the
    ratios between them survive noise better than their absolute values.
    """
    now = CLOCKS[clock]
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = now()
            fn()
            sync(device)
            times[name].append(now() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def time_call(fn: Callable[[], Any], device: torch.device | str = "cpu", repeats: int = 3,
              warmup: int = 1) -> float:
    """Median wall seconds of `fn()` over `repeats` runs after `warmup` untimed ones."""
    return time_interleaved({"fn": fn}, device, repeats, warmup)["fn"]


def peak_bytes(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak tensor memory `fn()` allocates beyond what was live when it started.

    GPU: torch.cuda.max_memory_allocated. CPU: torch's CPU allocator, seen through the
    profiler's memory events (profile_memory=True records every tensor allocation and free
    with its size); the peak of their running sum. Python objects and the allocator's own
    slack are not counted; tensors, including autograd's saved activations, are.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak

