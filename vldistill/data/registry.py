"""Caption datasets by name: `data.name` picks a builder
`fn(data_cfg, cache_dir, **options) -> CaptionDataset`.

Add one with `@DATASETS.register("name", options=MyOptions, example=write_tiny)`; the config
accepts the name at once. `options` (optional) is the dataclass of its own settings
(`data.dataset_args.name.OPTION`), passed as keyword arguments; `example(folder)` (optional)
writes a tiny instance of its files into `folder` and returns the `data.*` overrides that read
it, for the registry-driven tests (without one they build `data.name=name` as it is).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..registry import Registry
from .splits import CaptionDataset

if TYPE_CHECKING:
    from ..config import DataConfig

DATASETS: Registry[Callable[..., CaptionDataset]] = Registry("dataset")


def build_dataset(data_cfg: "DataConfig", cache_dir: str | Path | None = None) -> CaptionDataset:
    """The dataset `data_cfg.name` names, built from `data_cfg` and its options block
    (`data.dataset_args.NAME`, caching under `cache_dir`), once it passes the data checks every
    format goes through (`vldistill.data.checks`)."""
    from .checks import check_dataset
    from .text_cache import default_cache_dir
    name = data_cfg.name
    options = DATASETS.options(name, data_cfg.dataset_args.get(name), f"data.dataset_args.{name}")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    return check_dataset(DATASETS.get(name)(data_cfg, cache_dir, **options), data_cfg.accept, cache_dir)
