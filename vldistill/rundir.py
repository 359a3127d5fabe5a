"""The run directory: where every stage of one run reads and writes.

    RUN_DIR/config.yaml                   the resolved config     RUN_DIR/environment.json
    RUN_DIR/metrics.jsonl                 one record per iteration / evaluation
    RUN_DIR/log.txt, RUN_DIR/run.lock     the log; who writes the run now (`vldistill.runtime.runlock`)
    RUN_DIR/buffer/                       trajectory store (or buffer.dir)
    RUN_DIR/set.{safetensors,json}        the `lors` set
    RUN_DIR/METHOD/set.{safetensors,json} every other distilled method's set
    RUN_DIR/checkpoints/METHOD.*          distill checkpoints
    RUN_DIR/results.json, RUN_DIR/report/ evaluation and inspection (report/report.html)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .runtime import distributed, runlock
from .config import Config
from .config_merge import to_yaml
from .runtime.environment import environment, log_to, resolve_device, use_deterministic
from .runtime.io import write_json, write_text
from .buffer.store import TrajectoryStore


@dataclass
class Run:
    cfg: Config
    dir: Path
    device: torch.device
    lock: runlock.RunLock | None = None     # held by the process that writes the run (rank 0)

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    def store(self, cfg: Config | None = None) -> TrajectoryStore:
        """The trajectory store of `cfg` (default: the run's config)."""
        cfg = cfg or self.cfg
        return TrajectoryStore(cfg.buffer.dir or self.dir / "buffer")

    def set_path(self, method: str) -> Path:
        return self.dir / "set" if method == "lors" else self.dir / method / "set"

    def checkpoint_path(self, method: str) -> Path:
        return self.dir / "checkpoints" / f"{method}.safetensors"


def open_run(cfg: Config, force_unlock: bool = False) -> Run:
    """Lock and create the run directory, record the config and environment, set threads,
    determinism and logging. `force_unlock` takes over a lock whose owner cannot be proved
    gone (`vldistill.runtime.runlock`)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_deterministic(cfg.deterministic)
    device = resolve_device(cfg.device)
    ctx = distributed.init(device)          # joins torchrun's process group, if launched so
    log_to(run_dir / ("log.txt" if ctx.is_main else f"log.rank{ctx.rank}.txt"))   # a take-over is logged
    lock = runlock.acquire(run_dir, force_unlock) if ctx.is_main else None
    if ctx.is_main:
        write_text(run_dir / "config.yaml", to_yaml(cfg))
        write_json(run_dir / "environment.json", environment(device) | {
            "seed": cfg.seed, "deterministic": cfg.deterministic})
    return Run(cfg, run_dir, device, lock)
