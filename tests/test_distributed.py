"""torchrun shares experts and evaluation seeds out without changing a single bit of the result.

Two gloo processes on this machine (`torchrun --standalone --nproc_per_node=2`) against one
plain process, same config and seeds: the trajectory stores hold identical tensors and the
evaluation summaries are identical.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vldistill.runtime import distributed

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


# one torchrun launch runs both commands in the same two workers (process start-up dominates)
DRIVER = """
import sys
from vldistill.cli import main
for command in ("buffer", "eval"):
    if main([command, *sys.argv[1:]]) != 0:
        sys.exit(1)
"""


def _args(run_dir: Path, cache_dir: Path) -> list[str]:
    # three experts over two ranks: rank 0 trains experts 0 and 2, rank 1 trains expert 1
    return [str(TINY), f"run_dir={run_dir}", f"cache_dir={cache_dir}", "device=cpu", "threads=1",
            "buffer.num_experts=3", "eval.methods=[random]", "eval.num_eval=3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir) -> dict[int, Path]:
    """The buffer and an evaluation, once in this process and once in two torchrun workers."""
    from vldistill.cli import main
    root = tmp_path_factory.mktemp("distributed")
    threads = torch.get_num_threads()
    try:                                # first, so the data caches are filled here
        for command in ("buffer", "eval"):
            assert main([command, *_args(root / "single", cache_dir)]) == 0
    finally:
        torch.set_num_threads(threads)
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(driver), *_args(root / "double", cache_dir)],
                          cwd=root, env=env | {"HF_HUB_OFFLINE": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {1: root / "single", 2: root / "double"}


def test_torchrun_buffer_writes_the_same_store_as_one_process(runs):
    single, double = runs[1] / "buffer", runs[2] / "buffer"
    assert sorted(p.name for p in double.glob("expert_*")) == \
        ["expert_000.safetensors", "expert_001.safetensors", "expert_002.safetensors"]
    assert json.loads((single / "manifest.json").read_text()) == \
        json.loads((double / "manifest.json").read_text())
    for path in single.glob("expert_*.safetensors"):
        a, b = load_file(path), load_file(double / path.name)
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].equal(b[key]), f"{path.name}:{key}"
    assert not list(double.glob("*.tmp"))      # atomic writes left nothing behind


def test_torchrun_eval_gathers_the_same_summaries_as_one_process(runs):
    single = json.loads((runs[1] / "results.json").read_text())
    double = json.loads((runs[2] / "results.json").read_text())
    assert single["methods"]["random"]["n_seeds"] == 3
    assert single["methods"] == double["methods"]


def test_distill_refuses_to_run_under_torchrun(monkeypatch, tiny_cfg, capsys):
    from vldistill.cli import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["distill", str(TINY)]) == 2
    assert "runs as one process" in capsys.readouterr().err


def test_shard_and_map_alone_are_plain():
    assert distributed.context().world_size == 1
    assert distributed.shard([0, 1, 2, 3, 4], distributed.Context(1, 2)) == [1, 3]
    assert distributed.sharded_map(lambda x: x * x, [1, 2, 3]) == [1, 4, 9]
