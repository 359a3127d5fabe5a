"""Each config key's meaning, read from the schema's field metadata (`config.doc`): the
resolved config as annotated YAML (`vldistill config`) and the reference page docs/config.md
(`python -m vldistill.config_help docs/config.md` regenerates it; a test keeps it current).
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any

from omegaconf import OmegaConf

from .config import Config, section_class
from .fidelity import DIFFERENCES

REFERENCE_PATH = "docs/config.md"
REGENERATE = f"python -m vldistill.config_help {REFERENCE_PATH}"


def field_help(cls: type) -> dict[str, str]:
    """{field: its help} of a config dataclass."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _scalar(value: Any) -> str:
    """One YAML value on one line (lists in flow style)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return OmegaConf.to_yaml({"v": value}).strip()[3:]


def _lines(obj: Any, indent: str) -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        note = f.metadata.get("help", "")
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


def annotated_yaml(cfg: Config) -> str:
    """`cfg` as YAML that `load_config` reads back, each key with its meaning."""
    return "\n".join(_lines(cfg, "")) + "\n"


def _default(f: dataclasses.Field, key: str) -> str:
    modes = {d.key: d.shown for d in DIFFERENCES}
    if key in modes:
        return f"mode: reference `{modes[key][0]}`, vldistill `{modes[key][1]}`"
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return "{}" if isinstance(value, dict) else f"`{_scalar(value)}`"
    return f"`{_scalar(f.default)}`"


def _table(cls: type, prefix: str) -> list[str]:
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if section_class(f) is not None and f.name != "towers":
            continue
        key = prefix + f.name
        meaning = f.metadata.get("help", "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_default(f, key)} | {meaning} |")
    return rows


def reference_markdown() -> str:
    """docs/config.md: every key, its default and its meaning, one table per section."""
    out = ["# Config reference", "",
           f"Generated from the field metadata in `vldistill/config.py` by `{REGENERATE}`;",
           "do not edit by hand. A default marked *mode* is filled from the run's `fidelity`",
           "(`vldistill/fidelity.py`); `vldistill config CONFIG` prints a resolved config with",
           "these meanings.", "", "## Top level", ""]
    out += _table(Config, "")
    for f in dataclasses.fields(Config):
        cls = section_class(f)
        if cls is None:
            continue
        out += ["", f"## {f.name}", "", f"{f.metadata.get('help', '').capitalize()}.", ""]
        out += _table(cls, f"{f.name}.")
        for sub in dataclasses.fields(cls):
            if section_class(sub) is not None:
                prefix = f"{f.name}.{sub.name}.NAME."
                doc = (section_class(sub).__doc__ or "").split("\n\n")[0]
                out += ["", f"### {prefix[:-1]}", "", " ".join(doc.split()), ""]
                out += _table(section_class(sub), prefix)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the reference page to the given path (or print it)."""
    argv = sys.argv[1:] if argv is None else argv
    text = reference_markdown()
    if argv:
        with open(argv[0], "w", encoding="utf-8") as out:
            out.write(text)
    else:
        print(text, end="")
    return 0


__all__ = ["REGENERATE", "annotated_yaml", "field_help", "main", "reference_markdown"]

if __name__ == "__main__":
    sys.exit(main())
