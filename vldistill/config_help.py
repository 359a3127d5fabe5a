"""Each config key's meaning, read from the schema's field metadata (`config.doc`) and from
the registered components' options dataclasses: the resolved config as annotated YAML
(`vldistill config`) and the reference page docs/config.md (`python -m vldistill.config_help
docs/config.md` regenerates it; a test keeps it current).
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


def _lines(obj: Any, indent: str, prefix: str, notes: dict[str, str]) -> list[str]:
    """A dataclass's fields as YAML lines; `notes` gives the help of keys inside mappings."""
    return [line for f in dataclasses.fields(obj)
            for line in _entry(f.name, getattr(obj, f.name), f.metadata.get("help", ""), indent, prefix, notes)]


def _entry(name: str, value: Any, note: str, indent: str, prefix: str, notes: dict[str, str]) -> list[str]:
    suffix = f"  # {note}" if note else ""
    key = f"{prefix}{name}"
    if dataclasses.is_dataclass(value):
        return [f"{indent}{name}:{suffix}", *_lines(value, indent + "  ", key + ".", notes)]
    if isinstance(value, dict) and value:
        return [f"{indent}{name}:{suffix}",
                *(line for k, v in value.items()
                  for line in _entry(k, v, notes.get(f"{key}.{k}", ""), indent + "  ", key + ".", notes))]
    return [f"{indent}{name}: {_scalar(value)}{suffix}"]


def annotated_yaml(cfg: Config, notes: dict[str, str] | None = None) -> str:
    """`cfg` as YAML that `load_config` reads back, each key with its meaning (`notes`: the help
    of the components' options, by dotted key; `vldistill.configio.option_notes`)."""
    return "\n".join(_lines(cfg, "", "", notes or {})) + "\n"


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
    return "\n".join(out + _options_section()) + "\n"


def _options_section() -> list[str]:
    """The options of every registered component that has some, one table each."""
    from .configio import OPTION_BLOCKS             # fills the registries (imports torch)
    out = ["", "## Component options", "",
           "A registered component owns its options: a dataclass registered with it, filled from its",
           "block `BLOCK.NAME` (e.g. `model.image_tower_args.convnet.width=32`). The loaders check each",
           "block with that dataclass and fill in the defaults of the components a run uses, so",
           "config.yaml and `vldistill config` show them. The registered components with options:"]
    for block, registry in OPTION_BLOCKS.items():
        for name in registry.names():
            cls = registry.options_class(name)
            if cls is not None:
                doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
                out += ["", f"### {block}.{name}", "", doc, "", *_table(cls, f"{block}.{name}.")]
    return out


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
