"""Shared pieces of the reliability tests (resume, faults, validation, reproducibility):
the fastest tiny settings, one trajectory store built once per test session, and a way to
run the CLI in-process and capture its one-line error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from vldistill.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

# One short expert epoch over the images (not every caption); the tiny config's distill
# settings (start epoch 0, M = 1) need no more. threads=2 pins the CPU kernels' reduction
# order, so runs in this process and in a subprocess give the same bits.
FAST = ["buffer.epochs=1", "buffer.pairs_per_epoch=images", "threads=2"]


def tiny_store(cache_dir: Path) -> Path:
    """A one-expert trajectory store for the tiny config, trained once per session."""
    store_dir = cache_dir / "reliability-store"
    if (store_dir / "expert_000.safetensors").is_file():
        return store_dir
    from vldistill.configio import load_config
    from vldistill.data import prepare_data
    from vldistill.buffer.experts import run_buffer
    from vldistill.buffer.store import TrajectoryStore
    cfg = load_config(TINY, [f"cache_dir={cache_dir}", *FAST])
    run_buffer(cfg, prepare_data(cfg), torch.device("cpu"), TrajectoryStore(store_dir))
    return store_dir


def copy_store(cache_dir: Path, to: Path) -> Path:
    """A private copy of the session store, for tests that change it."""
    shutil.copytree(tiny_store(cache_dir), to)
    return to


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """main(argv) in this process; returns the exit code and stderr's error lines (one per
    problem found), without progress bars and logs."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, "\n".join(line for line in err.splitlines() if line.startswith("vldistill:"))


def distill_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("stage") == "distill"]
