"""Merging configs with omegaconf: defaults, a YAML file and `key=value` overrides become a
validated `Config` with its fidelity mode resolved; omegaconf's errors become one-line
`ConfigError`s with the closest valid key suggested.

Registered names (datasets, towers, losses, methods) are not looked up here: that needs the
registries, and the methods' own settings (`vldistill.evaluation.methods`) are derived with `derive`, so
this module sits below them. `vldistill.configio` adds the name checks to make the public
loaders.
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Callable

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .config import Config, ConfigError, key_help
from .fidelity import resolve

Layer = tuple[str, Callable[[], Any]]       # (where it comes from, for errors; make the layer)

# keys that moved into a component's own options block: old key -> new key (configs, run
# directories' config.yaml and set cards written before keep loading, with a warning)
MOVED_KEYS = {"model.convnet_width": "model.image_tower_args.convnet.width",
              "model.convnet_depth": "model.image_tower_args.convnet.depth"}

log = logging.getLogger(__name__)


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, (dict, DictConfig)):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _unknown_key_message(bad: str) -> str:
    valid = _all_keys(OmegaConf.to_container(OmegaConf.structured(Config)))
    close = difflib.get_close_matches(bad, valid, n=1, cutoff=0.5)
    leaf = bad.rsplit(".", 1)[-1]
    if not close:
        close = [k for k in valid if k.rsplit(".", 1)[-1] == leaf][:1]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key {bad!r}{hint}"


def file_layer(path: str | Path) -> list[Layer]:
    """A YAML file as a merge layer (a missing file or broken YAML is a one-line ConfigError)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    return [(f"config file {str(path)!r}", lambda: _load_yaml(path))]


def dotlist_layers(overrides: list[str]) -> list[Layer]:
    """`key=value` overrides as merge layers, one each (errors name the override)."""
    layers = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        layers.append((f"override {item!r}", lambda item=item: _dotlist(item)))
    return layers


def _dotlist(item: str) -> DictConfig:
    """One override; a value YAML cannot read (a brace pattern, say) is a one-line ConfigError."""
    try:
        return OmegaConf.from_dotlist([item])
    except yaml.YAMLError as err:
        key, _, value = item.partition("=")
        reason = str(err).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({reason}); quote it, e.g. "
                          f"'{key}=\"{value}\"'") from None


def merge(base: Config | type[Config], layers: list[Layer]) -> Config:
    """`base` with the layers merged in order, validated, its fidelity mode resolved."""
    return resolve(_merge(OmegaConf.structured(base), layers))


def derive(cfg: Config, overrides: list[str]) -> Config:
    """A copy of `cfg` with `key=value` overrides applied, validated and resolved again; the
    names it sets are not looked up (`vldistill.configio.with_overrides` does)."""
    return merge(cfg, dotlist_layers(overrides))


def _merge(merged: DictConfig, layers: list[Layer]) -> Config:
    """Merge (source, make_layer) layers in order; omegaconf's errors become one-line ConfigErrors."""
    source = "the defaults"             # which layer is being merged, for errors without a key
    try:
        for source, make in layers:
            merged = OmegaConf.merge(merged, _moved(make(), source))
        return OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        key = getattr(err, "full_key", None) or str(err).split("'")[1]
        raise ConfigError(_unknown_key_message(str(key))) from None
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        reason = str(err).splitlines()[0]
        meaning = key_help(str(key)) if key else ""         # a wrong type: say what the key is
        gloss = f" ({key}: {meaning})" if meaning else ""
        raise ConfigError(f"{f'config key {key!r}' if key else source}: {reason}{gloss}") from None


def _moved(layer: Any, source: str) -> Any:
    """`layer` with each key of MOVED_KEYS it holds under its new name."""
    for old, new in MOVED_KEYS.items():
        section, _, leaf = old.rpartition(".")
        node = OmegaConf.select(layer, section) if isinstance(layer, DictConfig) else None
        if not isinstance(node, DictConfig) or leaf not in node:
            continue
        if OmegaConf.select(layer, new) is not None:
            raise ConfigError(f"{source}: {old} is the old name of {new}; give only the latter")
        OmegaConf.update(layer, new, node.pop(leaf), force_add=True)
        log.warning("%s: %s is now %s (read as that)", source, old, new)
    return layer


def _load_yaml(path: Path) -> Any:
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: "
                          f"{' '.join(str(err).split())}") from None


def to_yaml(cfg: Config) -> str:
    """`cfg` as the YAML config.yaml holds (the loaders read it back)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


__all__ = ["Layer", "MOVED_KEYS", "derive", "dotlist_layers", "file_layer", "merge", "to_yaml"]
