"""Caption datasets by name: `data.name` picks a builder `fn(data_cfg, cache_dir) -> CaptionDataset`.

Add one with `@DATASETS.register("name")`; the config accepts the name at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..registry import Registry
from .splits import CaptionDataset

if TYPE_CHECKING:
    from ..config import DataConfig

DATASETS: Registry[Callable[["DataConfig", Path], CaptionDataset]] = Registry("dataset")


def build_dataset(data_cfg: "DataConfig", cache_dir: str | Path | None = None) -> CaptionDataset:
    """The dataset `data_cfg.name` names, built from `data_cfg` (caches under `cache_dir`), once it
    passes the data checks every format goes through (`vldistill.data.checks`)."""
    from .checks import check_dataset
    from .text_cache import default_cache_dir
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    return check_dataset(DATASETS.get(data_cfg.name)(data_cfg, cache_dir), data_cfg.accept, cache_dir)
