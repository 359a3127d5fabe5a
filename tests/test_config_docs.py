"""Every config key says what it means, as data: the schema's field metadata is what
`vldistill config`, docs/config.md and error messages show."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vldistill.config import Config, ConfigError, EvalTowerConfig, key_help, section_class
from vldistill.config_help import REFERENCE_PATH, REGENERATE, reference_markdown
from vldistill.configio import load_config

ROOT = Path(__file__).resolve().parents[1]


def _keys(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    out = []
    for f in dataclasses.fields(cls):
        out.append((prefix + f.name, f))
        sub = section_class(f)
        if sub is not None:
            out += _keys(sub, prefix + f.name + (".NAME." if sub is EvalTowerConfig else "."))
    return out


def test_every_config_key_is_documented():
    keys = _keys(Config)
    assert any(key.startswith("eval.towers.NAME.") for key, _ in keys)     # the walk reaches them
    undocumented = [key for key, f in keys if not f.metadata.get("help", "").strip()]
    assert not undocumented, f"config keys without help (config.doc(default, help)): {undocumented}"


def test_every_registered_components_option_is_documented():
    from vldistill.configio import OPTION_BLOCKS
    from vldistill.options import option_help
    undocumented = [f"{block}.{name}.{option}" for block, registry in OPTION_BLOCKS.items()
                    for name in registry.names()
                    for option, text in option_help(registry.options_class(name)).items() if not text.strip()]
    assert not undocumented, f"options without help (config.doc(default, help)): {undocumented}"


def test_mode_keys_say_they_follow_the_fidelity():
    from vldistill.fidelity import DIFFERENCES
    for difference in DIFFERENCES:
        assert key_help(difference.key).startswith("mode:"), difference.key


def test_key_help_finds_nested_keys():
    assert key_help("distill.syn_steps").startswith("T: student steps")
    assert key_help("eval.towers.resnet.lr") == key_help("eval.towers.NAME.lr") != ""
    assert key_help("distill.nonsense") == "" and key_help("nonsense") == ""


def test_a_wrong_type_error_quotes_the_keys_help():
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["distill.rank=abc"])
    assert f"(distill.rank: {key_help('distill.rank')})" in str(caught.value)


def test_config_reference_page_is_current():
    committed = (ROOT / REFERENCE_PATH).read_text(encoding="utf-8")
    assert committed == reference_markdown(), f"{REFERENCE_PATH} is stale: regenerate it with `{REGENERATE}`"
