"""Results you can reproduce: the same config and seed give the same files, bit for bit, on CPU;
the run directory records what else the result depends on; `deterministic: true` is applied."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from reliability_helpers import FAST, TINY
from vldistill.cli import main
from vldistill.runtime.io import read_tensors_and_metadata

RUN = [*FAST, "eval.methods=[lors,lors-identity,random]", "eval.num_eval=1", "eval.epochs=2",
       "eval.val_every=1"]
SAME_BYTES = ["set.safetensors", "set_best.safetensors", "lors-identity/set.safetensors",
              "checkpoints/lors.safetensors", "checkpoints/lors-identity.safetensors"]


def _run(run_dir: Path, cache_dir: Path, *extra: str, command: str = "run") -> Path:
    assert main([command, str(TINY), f"run_dir={run_dir}", f"cache_dir={cache_dir}", *RUN, *extra]) == 0
    return run_dir


def _card(path: Path) -> dict:
    """A set's card without the config it quotes (which names its own run_dir)."""
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "config"}


@pytest.fixture(scope="module")
def first(tmp_path_factory, cache_dir) -> Path:
    return _run(tmp_path_factory.mktemp("first") / "run", cache_dir)


def test_same_config_and_seed_give_identical_files(first, tmp_path, cache_dir):
    second = _run(tmp_path / "run", cache_dir)
    for name in SAME_BYTES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # the expert: same tensors and training history (its file also records the seconds it took)
    (a, meta_a), (b, meta_b) = (read_tensors_and_metadata(run / "buffer" / "expert_000.safetensors")
                                for run in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(meta_a["metrics"])["history"] == json.loads(meta_b["metrics"])["history"]
    results = [json.loads((run / "results.json").read_text()) for run in (first, second)]
    assert results[0]["methods"] and results[0]["methods"] == results[1]["methods"]   # every number
    assert {k: v for k, v in results[0].items() if k != "sets"} == \
        {k: v for k, v in results[1].items() if k != "sets"}                         # "sets": their paths
    assert _card(first / "set.json") == _card(second / "set.json")


def test_another_seed_gives_another_set(first, tmp_path, cache_dir):
    """The control for the test above: the comparison does see a difference when there is one."""
    other = _run(tmp_path / "run", cache_dir, "seed=1", f"buffer.dir={first / 'buffer'}",
                 "eval.methods=[lors]", command="distill")
    assert (first / "set.safetensors").read_bytes() != (other / "set.safetensors").read_bytes()


def test_run_directory_records_what_the_result_depends_on(first):
    env = json.loads((first / "environment.json").read_text())
    assert env["seed"] == 0 and env["deterministic"] is False and env["device"] == "cpu"
    assert env["torch"] == torch.__version__ and env["packages"]["numpy"] and env["packages"]["safetensors"]
    assert env["vldistill"] and env["python"] and env["threads"] == torch.get_num_threads()
    assert "git_commit" in env and "git_dirty" in env and env["command"]
    assert re.search(r"^seed: 0$", (first / "config.yaml").read_text(), re.M)


def test_deterministic_flag_is_applied_and_changes_nothing_on_cpu(first, tmp_path, cache_dir):
    from vldistill.configio import load_config
    from vldistill.rundir import open_run
    try:
        run = _run(tmp_path / "run", cache_dir, "deterministic=true", f"buffer.dir={first / 'buffer'}",
                   "eval.methods=[lors]", command="distill")
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert json.loads((run / "environment.json").read_text())["deterministic"] is True
        assert (run / "set.safetensors").read_bytes() == (first / "set.safetensors").read_bytes()
    finally:
        open_run(load_config(TINY, [f"run_dir={tmp_path / 'off'}"])).lock.release()
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_deterministic_gpu_runs_are_identical(first, tmp_path, cache_dir):
    sets = []
    for name in ("a", "b"):
        run = _run(tmp_path / name, cache_dir, "device=cuda", "deterministic=true",
                   f"buffer.dir={first / 'buffer'}", "eval.methods=[lors]", command="distill")
        sets.append((run / "set.safetensors").read_bytes())
    assert sets[0] == sets[1]
