"""A registered component's own options: one dataclass per component, fields documented with
`config.doc`, filled from that component's block of the config (`model.image_tower_args.convnet`)
and checked by the dataclass itself (`__post_init__`).

The schema (`vldistill.config`) only knows that a block is a mapping; what it may hold belongs
to the component that registers it, so a tower, a dataset, a similarity, a matcher or a method
documents and validates its settings where it is defined, and a new one adds no config field.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .config import ConfigError


def option_help(cls: type | None) -> dict[str, str]:
    """{option: its help} of an options dataclass ({} for a component without options)."""
    return {} if cls is None else {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def parse_options(cls: type | None, block: Mapping[str, Any] | None, key: str, owner: str) -> dict[str, Any]:
    """`block` checked by `cls`, with its defaults for what the block leaves out, as a plain dict
    (the keyword arguments the component's function receives).

    Args:
        cls: the component's options dataclass; None: it takes no options.
        block: the config's block for it (None or {}: every default).
        key: the block's dotted key, for errors (`model.image_tower_args.convnet`).
        owner: the component, for errors (`image tower 'convnet'`).

    Raises:
        ConfigError: one line naming the key and the allowed options.
    """
    if block is not None and not isinstance(block, Mapping):
        raise ConfigError(f"{key}: expected a mapping of {owner}'s options, got {block!r}")
    block = dict(block or {})
    allowed = ", ".join(option_help(cls)) or "none"
    if cls is None:
        if block:
            raise ConfigError(f"{key}: {owner} takes no options; got {', '.join(map(str, block))}")
        return {}
    try:
        parsed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), block))
    except ConfigKeyError as err:
        bad = getattr(err, "key", None) or str(err).split("'")[1]
        raise ConfigError(f"{key}: {owner} has no option {str(bad)!r}; its options: {allowed}") from None
    except ConfigError as err:                  # the dataclass's own check
        raise ConfigError(f"{key}: {err}") from None
    except OmegaConfBaseException as err:       # a wrong type: say what the option is
        name = str(getattr(err, "full_key", "") or "")
        meaning = option_help(cls).get(name, "")
        gloss = f" ({meaning})" if meaning else ""
        raise ConfigError(f"{key}.{name}: {str(err).splitlines()[0]}{gloss}") from None
    return {f.name: getattr(parsed, f.name) for f in dataclasses.fields(cls)}


__all__ = ["option_help", "parse_options"]
