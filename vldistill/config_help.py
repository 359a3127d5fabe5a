"""The resolved config as YAML with each key's meaning (`vldistill config`).

The meanings are the comments beside the fields in `vldistill/config.py` (read from its
source, so the help can never drift from the code); comment lines between fields are kept
where they stand.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from functools import lru_cache

from omegaconf import OmegaConf

from . import config as config_module

_FIELD = re.compile(r"^    (\w+): [^#]*?(?:#\s?(.*))?$")
_COMMENT = re.compile(r"^    \s*#\s?(.*)$")


@lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, tuple[list[str], str]]:
    """{field: (comment lines above it, its trailing comment)} from the dataclass's source."""
    out: dict[str, tuple[list[str], str]] = {}
    above: list[str] = []
    last: str | None = None
    for line in inspect.getsource(cls).splitlines():
        if line.startswith("    def "):
            break
        field = _FIELD.match(line)
        comment = _COMMENT.match(line)
        if field and not line.lstrip().startswith("#"):
            last = field.group(1)
            out[last] = (above, field.group(2) or "")
            above = []
        elif comment and line.startswith("     ") and last is not None:
            # a comment indented under a field continues that field's comment
            before, text = out[last]
            out[last] = (before, f"{text} {comment.group(1)}".strip())
        elif comment:
            above = above + [comment.group(1)]
    return out


def _scalar(value) -> str:
    """One YAML value on one line (lists in flow style)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return OmegaConf.to_yaml({"v": value}).strip()[3:]


def _lines(obj, indent: str) -> list[str]:
    comments = field_comments(type(obj))
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        above, note = comments.get(f.name, ([], ""))
        out += [f"{indent}# {line}" for line in above]
        suffix = f"  # {note}" if note else ""
        if dataclasses.is_dataclass(value):
            out.append(f"{indent}{f.name}:{suffix}")
            out += _lines(value, indent + "  ")
        elif isinstance(value, dict) and value:
            out.append(f"{indent}{f.name}:{suffix}")
            for key, entry in value.items():
                out.append(f"{indent}  {key}:")
                out += _lines(entry, indent + "    ")
        else:
            out.append(f"{indent}{f.name}: {_scalar(value)}{suffix}")
    return out


def annotated_yaml(cfg: config_module.Config) -> str:
    """`cfg` as YAML that `load_config` reads back, each key with its comment."""
    return "\n".join(_lines(cfg, "")) + "\n"


__all__ = ["annotated_yaml", "field_comments"]
