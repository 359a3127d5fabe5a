"""Shared fixtures: a tiny shapes dataset with real MiniLM caption embeddings (cached per
session), and configs small enough that a whole run takes seconds on a CPU."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One text-embedding / dataset cache for the whole session."""
    return tmp_path_factory.mktemp("vldistill-cache")


@pytest.fixture
def tiny_cfg(tmp_path, cache_dir):
    """The tiny config with its run directory in tmp_path; pass overrides to customise."""
    from vldistill.configio import load_config

    def make(*overrides: str):
        return load_config(TINY, [f"run_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}", *overrides])
    return make


@pytest.fixture(scope="session")
def tiny_data(cache_dir):
    from vldistill.configio import load_config
    from vldistill.data import prepare_data
    return prepare_data(load_config(TINY, [f"cache_dir={cache_dir}"]))
