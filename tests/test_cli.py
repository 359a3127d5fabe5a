"""The command line explains itself: per-command help, the resolved config with each key's
meaning, and a distilled set decoded in the terminal."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from vldistill.cli import COMMANDS, main
from vldistill.configio import load_config
from vldistill.config_help import annotated_yaml, field_help
from vldistill.config import DistillConfig

from test_evaluate import make_set

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def test_each_command_has_its_own_help(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert all(name in top for name in COMMANDS)
    seen = set()
    for name, command in COMMANDS.items():
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        text = capsys.readouterr().out
        assert done.value.code == 0 and f"vldistill {name}" in text
        assert " ".join(command.details.split()) in " ".join(text.split())    # what it reads and writes
        seen.add(text)
    assert len(seen) == len(COMMANDS)
    assert main(["nonsense"]) == 2 and "unknown command 'nonsense'" in capsys.readouterr().err


def test_config_prints_the_resolved_config_with_each_keys_meaning(tmp_path, capsys):
    assert main(["config", str(TINY), "fidelity=reference", "distill.rank=3"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    assert load_config(path) == load_config(TINY, ["fidelity=reference", "distill.rank=3"])   # reads back
    assert "syn_steps: 3  # T: student steps on the synthetic set per iteration" in text
    assert "head_dropout: 0.1  # mode:" in text                 # resolved, and says it is mode-dependent
    assert field_help(DistillConfig)["expert_order"].startswith("mode: random (an expert drawn per iteration) | cycle")


def test_annotated_yaml_covers_every_key():
    cfg = load_config(TINY)
    text = annotated_yaml(cfg)
    flat = [line.split(":")[0].strip() for line in text.splitlines() if ":" in line and not line.lstrip().startswith("#")]
    for section in ("data", "model", "buffer", "distill", "eval"):
        assert all(name in flat for name in asdict(getattr(cfg, section)))


def test_decode_prints_each_pair_and_the_mined_pairs(tmp_path, tiny_cfg, tiny_data, capsys):
    cfg = tiny_cfg()
    synthetic = make_set(tiny_data, tmp_path / "run" / "set", n=12, card={"config": asdict(cfg)})
    assert main(["decode", str(tmp_path / "run" / "set.safetensors"), "--top-k", "2", "--pairs", "3"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert sum(line.startswith("#") for line in lines) == 12
    first = next(i for i, line in enumerate(lines) if line.startswith("#0 "))
    assert tiny_data.dataset.train.captions[synthetic.card["init_captions"][0]] in lines[first]
    assert len([line for line in lines[first + 1:first + 3] if line.startswith("      ")]) == 2
    assert sum(line.startswith("S[") for line in lines) == 3          # lowrank: the mined pairs
