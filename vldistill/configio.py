"""Loading configs: defaults, a YAML file and `key=value` overrides merged into a validated,
resolved `Config` (`vldistill.config_merge`), whose registered names are then looked up in
the registries (datasets, towers, similarities, losses, matchers, augmentations, methods), and
whose option blocks (`model.image_tower_args.NAME`, ...) are checked by the components they
belong to (`vldistill.options`).

The registries are filled by importing the modules that register into them, which is why
the name checks live here and not in the schema (`vldistill.config` imports no torch).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .evaluation.augment import AUGMENTATIONS
from .config import Config, ConfigError
from .config_merge import derive, dotlist_layers, file_layer, merge
from .data import DATASETS
from .algorithms.losses import LOSSES
from .algorithms.matching import MATCHERS
from .evaluation.methods import METHODS
from .models import IMAGE_TOWERS, TEXT_TOWERS
from .options import option_help
from .registry import Registry, tower_family
from .algorithms.similarity import SIMILARITIES

RENAMED_METHODS = {"baseline": "lors-identity"}     # old name -> new name, refused with a hint

# each options block of the config (a mapping NAME -> that component's options) and its registry
OPTION_BLOCKS: dict[str, Registry[Any]] = {
    "data.dataset_args": DATASETS, "model.image_tower_args": IMAGE_TOWERS,
    "model.text_tower_args": TEXT_TOWERS, "distill.sim_args": SIMILARITIES,
    "distill.matching_args": MATCHERS, "eval.method_args": METHODS}


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
    """`cfg`, once every name it chooses is registered (a tower's `PREFIX` in `PREFIX:ARG`) and
    every options block is accepted by its component, with the used components' options filled
    in; otherwise a one-line ConfigError listing the known names or options."""
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
    return _checked_options(cfg)


def _in_use(cfg: Config) -> dict[str, list[str]]:
    """The components `cfg` uses, by options block (eval towers and their methods included)."""
    towers = [t.image_tower or key for key, t in cfg.eval.towers.items()]
    methods = [*cfg.eval.methods, *(m for t in cfg.eval.towers.values() for m in t.methods or [])]
    return {"data.dataset_args": [cfg.data.name],
            "model.image_tower_args": [tower_family(t) for t in (cfg.model.image_tower, *towers)],
            "model.text_tower_args": [tower_family(cfg.model.text_tower)],
            "distill.sim_args": [cfg.distill.sim_kind], "distill.matching_args": [cfg.distill.matching],
            "eval.method_args": methods}


def _block(cfg: Config, key: str) -> dict:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def _checked_options(cfg: Config) -> Config:
    """`cfg` with every options block checked by its component, and the blocks of the components
    it uses filled in with their defaults (config.yaml and `vldistill config` show them)."""
    used = _in_use(cfg)
    for key, registry in OPTION_BLOCKS.items():
        given = _block(cfg, key)
        checked = {}
        for name in dict.fromkeys([*given, *used[key]]):
            _registered(key, name, registry)
            values = registry.options(name, given.get(name), f"{key}.{name}")
            if values or name in given:
                checked[name] = values
        section, _, field = key.partition(".")
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{field: checked})})
    for key, tower in cfg.eval.towers.items():
        family = tower_family(tower.image_tower or key)
        IMAGE_TOWERS.options(family, cfg.model.image_tower_args.get(family, {}) | tower.image_tower_args,
                             f"eval.towers.{key}.image_tower_args")
    return cfg


def option_notes(cfg: Config) -> dict[str, str]:
    """{dotted key: help} of every option in `cfg`'s options blocks (`vldistill config` prints them)."""
    notes = {}
    for key, registry in OPTION_BLOCKS.items():
        for name in _block(cfg, key):
            notes[f"{key}.{name}"] = f"the options of {registry.kind} {name!r}"
            for option, text in option_help(registry.options_class(name)).items():
                notes[f"{key}.{name}.{option}"] = text
    for key, tower in cfg.eval.towers.items():
        for option, text in option_help(IMAGE_TOWERS.options_class(tower_family(tower.image_tower or key))).items():
            notes[f"eval.towers.{key}.image_tower_args.{option}"] = text
    return notes


def _registered(key: str, value: str, registry: Registry[Any], tower: bool = False) -> None:
    if (value.partition(":")[0] if tower else value) not in registry:
        raise ConfigError(f"{key}: unknown {registry.kind} {value!r}; known: {', '.join(registry.names())}")


def _check_methods(methods: list[str], key: str) -> None:
    for m in methods:
        if m in RENAMED_METHODS:
            raise ConfigError(f"{key}: the method {m!r} is now called {RENAMED_METHODS[m]!r} (LoRS's "
                              "pipeline with S = I); VL-distill's own algorithm is 'vl-distill'")
        _registered(key, m, METHODS)


__all__ = ["OPTION_BLOCKS", "RENAMED_METHODS", "check_names", "config_from_dict", "load_config",
           "option_notes", "with_overrides"]
