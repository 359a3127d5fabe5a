"""The stages wired together over a run directory.

    RUN_DIR/config.yaml          the resolved config          RUN_DIR/environment.json
    RUN_DIR/metrics.jsonl        one record per iteration / evaluation
    RUN_DIR/buffer/              trajectory store (or buffer.dir)
    RUN_DIR/set.{safetensors,json}            the LoRS set (distill.sim_kind)
    RUN_DIR/baseline/set.{safetensors,json}   the identity-similarity baseline
    RUN_DIR/checkpoints/                      distill checkpoints
    RUN_DIR/results.json, RUN_DIR/report/     evaluation and inspection
"""
from __future__ import annotations

import logging
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .config import Config, to_yaml
from .data import PreparedData, prepare_data
from .distill import run_distill
from .evaluate import evaluate_methods
from .experts import TrajectoryStore, run_buffer
from .io import append_jsonl, read_json, write_json, write_text
from .report import decode_captions, denormalize, results_table, save_image_grid, save_similarity_heatmap
from .synset import DistilledSet

log = logging.getLogger(__name__)

DISTILLED_METHODS = {"lors": None, "baseline": "identity"}     # method -> similarity kind (None: config's)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from .errors import UserError
        raise UserError(f"device={name} but no CUDA device is available; use device=cpu or auto")
    return torch.device(name)


@dataclass
class Run:
    cfg: Config
    dir: Path
    device: torch.device

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def store(self) -> TrajectoryStore:
        return TrajectoryStore(self.cfg.buffer.dir or self.dir / "buffer")

    def set_path(self, method: str) -> Path:
        return self.dir / "set" if method == "lors" else self.dir / method / "set"

    def checkpoint_path(self, method: str) -> Path:
        return self.dir / "checkpoints" / f"{method}.safetensors"


def open_run(cfg: Config) -> Run:
    """Create the run directory, record the config and environment, set threads and logging."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _log_to(run_dir / "log.txt")
    write_text(run_dir / "config.yaml", to_yaml(cfg))
    device = resolve_device(cfg.device)
    write_json(run_dir / "environment.json", environment(device) | {"seed": cfg.seed})
    return Run(cfg, run_dir, device)


def environment(device: torch.device) -> dict:
    """What a result depends on beyond the config: versions, git commit, device."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"vldistill": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "device": str(device),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "git_commit": commit}


def _log_to(path: Path) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        root.addHandler(console)
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def stage_buffer(run: Run, data: PreparedData) -> TrajectoryStore:
    return run_buffer(run.cfg, data, run.device, run.store)


def stage_distill(run: Run, data: PreparedData, methods: list[str] | None = None) -> dict[str, DistilledSet]:
    """Distill every distilled method the config asks for (resuming finished ones from disk)."""
    sets = {}
    for method in methods or [m for m in run.cfg.eval.methods if m in DISTILLED_METHODS]:
        path = run.set_path(method)
        if path.with_suffix(".safetensors").is_file() and run.cfg.distill.resume:
            sets[method] = DistilledSet.load(path)
            log.info("%s set already distilled: %s", method, path)
            continue
        kind = DISTILLED_METHODS[method] or run.cfg.distill.sim_kind
        path.parent.mkdir(parents=True, exist_ok=True)
        sets[method] = run_distill(run.cfg, data, run.store, path, run.checkpoint_path(method),
                                   run.metrics_path, kind, run.device)
    return sets


def stage_eval(run: Run, data: PreparedData, sets: dict[str, DistilledSet]) -> dict:
    summaries = evaluate_methods(run.cfg, data, sets, run.device)
    results = {"dataset": data.dataset.name, "n_pairs": run.cfg.distill.n_pairs,
               "methods": summaries,
               "eval": {"selection": run.cfg.eval.selection, "num_eval": run.cfg.eval.num_eval,
                        "epochs": run.cfg.eval.epochs, "lr": run.cfg.eval.lr,
                        "image_tower": run.cfg.model.image_tower}}
    write_json(run.dir / "results.json", results)
    append_jsonl(run.metrics_path, {"stage": "eval", **{m: s["r_mean"] for m, s in summaries.items()}})
    return results


def stage_report(run: Run, data: PreparedData, sets: dict[str, DistilledSet]) -> str:
    """PNGs of the set (images with decoded captions, similarity heat map) and the table."""
    out = run.dir / "report"
    out.mkdir(exist_ok=True)
    for method, synthetic in sets.items():
        decoded = decode_captions(synthetic.text_embeddings, data.text["train"],
                                  data.dataset.train.captions, k=1)
        images = denormalize(synthetic.images, data.dataset.mean, data.dataset.std)
        save_image_grid(images, [d[0][0] for d in decoded], out / f"{method}_grid.png")
        if synthetic.similarity.kind != "identity":
            save_similarity_heatmap(synthetic.similarity_matrix(), out / f"{method}_similarity.png",
                                    f"{method}: learned similarity ({synthetic.similarity.kind})")
    results_path = run.dir / "results.json"
    return results_table(read_json(results_path)) if results_path.is_file() else ""


def run_all(run: Run) -> str:
    """buffer -> distill -> evaluate -> report; returns the results table."""
    data = prepare_data(run.cfg, str(run.device))
    stage_buffer(run, data)
    sets = stage_distill(run, data)
    stage_eval(run, data, sets)
    return stage_report(run, data, sets)
