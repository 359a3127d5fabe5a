"""Loading configs: defaults, a YAML file and `key=value` overrides merged into a validated,
resolved `Config` (`vldistill.config_merge`), whose registered names are then looked up in
the registries (datasets, towers, similarities, losses, matchers, augmentations, methods).

The registries are filled by importing the modules that register into them, which is why
the name checks live here and not in the schema (`vldistill.config` imports no torch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .augment import AUGMENTATIONS
from .config import Config, ConfigError
from .config_merge import derive, dotlist_layers, file_layer, merge
from .data import DATASETS
from .losses import LOSSES
from .matching import MATCHERS
from .methods import METHODS
from .models import IMAGE_TOWERS, TEXT_TOWERS
from .registry import Registry
from .similarity import SIMILARITIES

RENAMED_METHODS = {"baseline": "lors-identity"}     # old name -> new name, refused with a hint


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Merge defaults, a YAML file and `key=value` overrides into a validated `Config`."""
    layers = file_layer(path) if path is not None else []
    return check_names(merge(Config, layers + dotlist_layers(overrides or [])))


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of `cfg` with `key=value` overrides applied and validated again (a method
    registered outside the package states the settings its set is made with this way)."""
    return check_names(derive(cfg, overrides))


def config_from_dict(values: dict, source: str, overrides: list[str] | None = None) -> Config:
    """A `Config` from a plain dict (e.g. the one a set's card records), validated like a file."""
    layers = [(source, lambda: OmegaConf.create(values))] + dotlist_layers(overrides or [])
    return check_names(merge(Config, layers))


def check_names(cfg: Config) -> Config:
    """`cfg`, once every name it chooses is registered (a tower's `PREFIX` in `PREFIX:ARG`);
    otherwise a one-line ConfigError listing the known names."""
    _registered("data.name", cfg.data.name, DATASETS)
    _registered("model.image_tower", cfg.model.image_tower, IMAGE_TOWERS, tower=True)
    _registered("model.text_tower", cfg.model.text_tower, TEXT_TOWERS, tower=True)
    _registered("distill.sim_kind", cfg.distill.sim_kind, SIMILARITIES)
    _registered("distill.loss", cfg.distill.loss, LOSSES)
    _registered("distill.matching", cfg.distill.matching, MATCHERS)
    for key, tower in cfg.eval.towers.items():
        # null image_tower: the entry's key names the tower
        _registered("eval.towers.*.image_tower", tower.image_tower or key, IMAGE_TOWERS, tower=True)
        if tower.augment is not None:
            _registered("eval.towers.*.augment", tower.augment, AUGMENTATIONS)
        _check_methods(tower.methods or [], "eval.towers.*.methods")
    _registered("eval.augment", cfg.eval.augment, AUGMENTATIONS)
    _check_methods(cfg.eval.methods, "eval.methods")
    return cfg


def _registered(key: str, value: str, registry: Registry[Any], tower: bool = False) -> None:
    if (value.partition(":")[0] if tower else value) not in registry:
        raise ConfigError(f"{key}: unknown {registry.kind} {value!r}; known: {', '.join(registry.names())}")


def _check_methods(methods: list[str], key: str) -> None:
    for m in methods:
        if m in RENAMED_METHODS:
            raise ConfigError(f"{key}: the method {m!r} is now called {RENAMED_METHODS[m]!r} (LoRS's "
                              "pipeline with S = I); VL-distill's own algorithm is 'vl-distill'")
        _registered(key, m, METHODS)


__all__ = ["RENAMED_METHODS", "check_names", "config_from_dict", "load_config", "with_overrides"]
