"""Loading configs: defaults, a YAML file and `key=value` overrides merged by omegaconf into a
validated `Config`; omegaconf's errors become one-line `ConfigError`s with the closest valid key
suggested. (Re-exported by `vldistill.config`.)"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .config import Config, ConfigError


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Merge defaults, a YAML file and `key=value` overrides into a validated `Config`."""
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found")
        layers.append((f"config file {str(path)!r}", lambda: _load_yaml(path)))
    return _merge(OmegaConf.structured(Config), layers + _dotlist_layers(overrides or []))


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of `cfg` with `key=value` overrides applied and validated again (methods use this
    to state the settings their sets are distilled and evaluated with)."""
    return _merge(OmegaConf.structured(cfg), _dotlist_layers(overrides))


def _dotlist_layers(overrides: list[str]) -> list:
    layers = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        layers.append((f"override {item!r}", lambda item=item: OmegaConf.from_dotlist([item])))
    return layers


def _merge(merged: DictConfig, layers: list) -> Config:
    """Merge (source, make_layer) layers in order; omegaconf's errors become one-line ConfigErrors."""
    source = "the defaults"             # which layer is being merged, for errors without a key
    try:
        for source, make in layers:
            merged = OmegaConf.merge(merged, make())
        return OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        key = getattr(err, "full_key", None) or str(err).split("'")[1]
        raise ConfigError(_unknown_key_message(str(key))) from None
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{f'config key {key!r}' if key else source}: {reason}") from None


def _load_yaml(path: Path):
    import yaml
    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: "
                          f"{' '.join(str(err).split())}") from None


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_dict(values: dict, source: str, overrides: list[str] | None = None) -> Config:
    """A `Config` from a plain dict (e.g. the one a set's card records), validated like a file."""
    return _merge(OmegaConf.structured(Config),
                  [(source, lambda: OmegaConf.create(values))] + _dotlist_layers(overrides or []))
