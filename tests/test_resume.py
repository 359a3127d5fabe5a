"""Runs that survive being killed: SIGKILL mid-iteration then resume gives the same bits as an
uninterrupted run; SIGTERM writes a checkpoint first; half-written files are never read."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reliability_helpers import FAST, TINY, copy_store, distill_records, run_cli, tiny_store
from vldistill.runtime import runlock
from vldistill.distill.checkpoint import read_checkpoint
from vldistill.errors import UserError
from vldistill.runtime.interrupts import REQUEUE_EXIT, Interrupted, deferred_interrupts
from vldistill.runtime.io import append_jsonl, read_tensors_and_metadata

ITERATIONS = 6          # checkpoints at 2, 4, 6 (tiny.yaml: checkpoint_every 2)


def _distill_args(run_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return ["distill", TINY, f"run_dir={run_dir}", f"cache_dir={cache_dir}",
            f"buffer.dir={tiny_store(cache_dir)}", "eval.methods=[lors]",
            f"distill.iterations={ITERATIONS}", *FAST, *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir) -> Path:
    """An uninterrupted run: the bits every interrupted-and-resumed run must reproduce."""
    from vldistill.cli import main
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert main([str(a) for a in _distill_args(run_dir, cache_dir)]) == 0
    return run_dir


def _same_files(a: Path, b: Path) -> None:
    """The final and best sets and the last checkpoint (momentum, generators, best-window
    state): same bytes; every card field distill wrote alike, but for the config it quotes
    (run_dir). `vldistill run` adds evaluation fields to `b`'s cards; those are not compared."""
    for name in ("set.safetensors", "set_best.safetensors", "checkpoints/lors.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"
    for name in ("set.json", "set_best.json"):
        first, second = (json.loads((run / name).read_text()) for run in (a, b))
        assert {k: second.get(k) for k in first if k != "config"} == \
            {k: v for k, v in first.items() if k != "config"}, f"{name} differs"


def _wait_for_record(run_dir: Path, it: int, proc: subprocess.Popen, limit_s: float = 600) -> None:
    """Poll metrics.jsonl until iteration `it` is logged (the process is then inside it + 1)."""
    deadline = time.monotonic() + limit_s            # a hang guard, not a timing assertion
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        path = run_dir / "metrics.jsonl"
        if path.is_file() and any(r["it"] >= it for r in distill_records(run_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"iteration {it} never showed up in {path}")


def test_sigkill_mid_iteration_then_resume_is_bit_identical(tmp_path, cache_dir, reference, capsys):
    run_dir = tmp_path / "run"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(TINY.parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "vldistill", *map(str, _distill_args(run_dir, cache_dir))],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_record(run_dir, 3, proc)           # checkpoint 2 written, iteration 4 running
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    checkpoint = run_dir / "checkpoints" / "lors.safetensors"
    killed_at = json.loads(read_tensors_and_metadata(checkpoint)[1]["checkpoint"])["info"]["iteration"]
    assert killed_at in (2, 4) and not (run_dir / "set.safetensors").exists()
    # what a kill during a checkpoint write leaves: a partial temporary file beside the real one
    stray = checkpoint.with_name(f".{checkpoint.name}.killed.tmp")
    stray.write_bytes(checkpoint.read_bytes()[:1000])

    # the one resume command, no flag: the dead process's lock is taken over, and the log says so
    assert runlock.lock_owner(run_dir).pid == proc.pid
    code, _ = run_cli(capsys, "run", run_dir, "eval.num_eval=1", "eval.epochs=1")
    assert code == 0
    _same_files(reference, run_dir)
    assert not stray.exists() and runlock.lock_owner(run_dir) is None
    assert f"took over the lock of pid {proc.pid}" in (run_dir / "log.txt").read_text()
    # the resumed iterations repeat the reference's losses exactly, from the checkpoint on
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resume = next(i for i, r in enumerate(records) if r["stage"] == "resume")
    assert records[resume]["it"] == killed_at
    redone = [(r["it"], r["loss"], r["lr_img"]) for r in records[resume + 1:] if r["stage"] == "distill"]
    expected = [(r["it"], r["loss"], r["lr_img"]) for r in distill_records(reference) if r["it"] > killed_at]
    assert redone == expected


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_scheduler_signal_writes_a_checkpoint_of_the_current_iteration(tmp_path, cache_dir, reference,
                                                                      capsys, monkeypatch, signum):
    from vldistill.distill.stage import Distiller
    run_dir = tmp_path / "run"
    step = Distiller.step

    def step_then_signal(self):
        record = step(self)
        if self.iteration == 3:                        # mid-window: not a checkpoint boundary
            os.kill(os.getpid(), signum)               # arrives while the iteration finishes
        return record
    monkeypatch.setattr(Distiller, "step", step_then_signal)
    code, err = run_cli(capsys, *_distill_args(run_dir, cache_dir))
    assert code == REQUEUE_EXIT == 75
    assert f"stopped by {signal.Signals(signum).name}" in err and "exit status 75: requeue" in err
    info = json.loads((run_dir / "checkpoints" / "lors.json").read_text())
    assert info["iteration"] == 3
    assert runlock.lock_owner(run_dir) is None         # released on the way out: no --force-unlock needed
    assert max(r["it"] for r in distill_records(run_dir)) == 3

    monkeypatch.setattr(Distiller, "step", step)
    code, _ = run_cli(capsys, "run", run_dir, "eval.num_eval=1", "eval.epochs=1")   # resumes in place
    assert code == 0 and (run_dir / "results.json").is_file()
    _same_files(reference, run_dir)                    # the half-finished best window resumed too


def test_distillation_never_draws_from_the_global_generators(tiny_cfg, tiny_data, cache_dir):
    """Checkpoints keep only the distiller's own generator; a resumed run is bit-identical only
    if no iteration draws from python's, numpy's or torch's global generators -- also with
    dropout in the student, whose masks come from per-step seeds."""
    import random

    import numpy as np
    from vldistill.distill.stage import Distiller
    from vldistill.buffer.store import TrajectoryStore
    store = TrajectoryStore(tiny_store(cache_dir))
    cfg = tiny_cfg(*FAST, "model.head_dropout=0.3")
    runs = []
    for global_seed in (1, 2):
        random.seed(global_seed), np.random.seed(global_seed), torch.manual_seed(global_seed)
        before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
        distiller = Distiller(cfg, tiny_data, store, torch.device("cpu"))
        losses = [distiller.step()["loss"] for _ in range(3)]
        after = (random.getstate(), np.random.get_state()[1], torch.get_rng_state())
        assert before[0] == after[0] and (before[1] == after[1]).all() and torch.equal(before[2], after[2])
        runs.append((losses, distiller.images.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])


def test_second_signal_while_deferred_raises_at_once():
    with deferred_interrupts() as pending:
        os.kill(os.getpid(), signal.SIGINT)
        assert pending.requested                       # recorded, nothing raised yet
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
    assert caught.value.exit_code == REQUEUE_EXIT


def test_checkpoint_of_another_setup_or_damaged_is_refused(reference, tmp_path):
    path = reference / "checkpoints" / "lors.safetensors"
    setup = json.loads(path.with_suffix(".json").read_text())["setup"]
    state, info = read_checkpoint(path, setup)
    assert info["iteration"] == ITERATIONS and int(state["counters"][0]) == ITERATIONS
    with pytest.raises(UserError, match=r"made with n_pairs=20, this run has n_pairs=10"):
        read_checkpoint(path, setup | {"n_pairs": 10})
    with pytest.raises(UserError, match=r"made with lr_param=\"linear\", this run has lr_param=\"log\""):
        read_checkpoint(path, setup | {"lr_param": "log"})
    damaged = tmp_path / "lors.safetensors"
    damaged.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="not a readable safetensors file") as caught:
        read_checkpoint(damaged, setup)
    assert "\n" not in str(caught.value)


def test_metrics_line_cut_by_a_kill_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"it": 1})
    with open(path, "a") as handle:
        handle.write('{"it": 2, "lo')                 # killed mid-write
    append_jsonl(path, {"it": 2})
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"it": 1} and json.loads(lines[-1]) == {"it": 2}


# ---------------------------------------------------------------- the buffer stage
def _buffer_cfg(store: Path, cache_dir: Path, *extra: str):
    from vldistill.configio import load_config
    return load_config(TINY, [f"cache_dir={cache_dir}", f"buffer.dir={store}", *FAST, *extra])


def test_buffer_restart_skips_finished_experts_and_never_reads_a_half_written_one(
        tmp_path, cache_dir, tiny_data):
    from vldistill.buffer.experts import run_buffer
    from vldistill.buffer.store import TrajectoryStore
    store_dir = copy_store(cache_dir, tmp_path / "store")
    store = TrajectoryStore(store_dir)
    finished = store.expert_path(0).read_bytes()
    finished_mtime = store.expert_path(0).stat().st_mtime_ns
    # a buffer killed while writing expert 1 leaves exactly this: a partial temporary file
    stray = store_dir / ".expert_001.safetensors.k1ll3d.tmp"
    stray.write_bytes(finished[: len(finished) // 2])
    assert store.experts() == [0]

    run_buffer(_buffer_cfg(store_dir, cache_dir, "buffer.num_experts=2"), tiny_data,
               torch.device("cpu"), store)
    assert store.experts() == [0, 1]
    assert store.expert_path(0).read_bytes() == finished              # not trained again
    assert store.expert_path(0).stat().st_mtime_ns == finished_mtime
    assert store.load(1, 1).image.shape == store.load(0, 1).image.shape
    assert store.expert_path(1).read_bytes() != finished              # its own seed


def _store_tensors(store_dir: Path) -> dict:
    from safetensors.torch import load_file
    return {p.name: load_file(p) for p in sorted(store_dir.glob("expert_*.safetensors"))}


def test_scheduler_signal_mid_expert_keeps_finished_experts_and_resume_matches(tmp_path, cache_dir,
                                                                              capsys, monkeypatch):
    import vldistill.buffer.experts as experts

    def args(run: str) -> list:
        return ["buffer", TINY, f"run_dir={tmp_path / run}", f"cache_dir={cache_dir}",
                "buffer.num_experts=2", *FAST]
    assert run_cli(capsys, *args("whole"))[0] == 0
    real, epochs = experts.train_epoch_on_pairs, []

    def signal_in_expert_1(*a, **k):              # one epoch per expert (FAST): call 2 is expert 1's
        epochs.append(1)
        if len(epochs) == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(*a, **k)
    monkeypatch.setattr(experts, "train_epoch_on_pairs", signal_in_expert_1)
    code, err = run_cli(capsys, *args("run"))
    store = tmp_path / "run" / "buffer"
    assert code == REQUEUE_EXIT and "stopped by SIGUSR1" in err
    assert [p.name for p in store.glob("*expert*")] == ["expert_000.safetensors"]    # 1 abandoned cleanly
    monkeypatch.setattr(experts, "train_epoch_on_pairs", real)
    assert run_cli(capsys, "buffer", tmp_path / "run")[0] == 0           # resume: only expert 1 trains
    whole, resumed = _store_tensors(tmp_path / "whole" / "buffer"), _store_tensors(store)
    assert list(whole) == list(resumed) == ["expert_000.safetensors", "expert_001.safetensors"]
    for name in whole:
        assert all(torch.equal(whole[name][k], resumed[name][k]) for k in whole[name]), name


def test_scheduler_signal_mid_seed_keeps_finished_seeds_and_resume_matches(tmp_path, cache_dir,
                                                                          capsys, monkeypatch):
    from vldistill.evaluation import methods

    def args(run: str) -> list:
        return ["eval", TINY, f"run_dir={tmp_path / run}", f"cache_dir={cache_dir}",
                f"buffer.dir={tiny_store(cache_dir)}", *FAST, "eval.methods=[random,herding]",
                "eval.num_eval=3", "eval.epochs=2", "eval.val_every=1"]
    assert run_cli(capsys, *args("whole"))[0] == 0
    real, trained = methods.train_on_set, []

    def counting(cfg, data, synthetic, seed, *a, **k):
        trained.append(seed)
        if len(trained) == 5:                        # 3 random seeds done, 1 herding; stop in the 2nd
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(cfg, data, synthetic, seed, *a, **k)
    monkeypatch.setattr(methods, "train_on_set", counting)
    run_dir = tmp_path / "run"
    code, err = run_cli(capsys, *args("run"))
    assert code == REQUEUE_EXIT and not (run_dir / "results.json").exists()
    assert len((run_dir / "eval_seeds.rank0.jsonl").read_text().splitlines()) == 4
    first_herding = trained[3]
    trained.clear()
    assert run_cli(capsys, "run", run_dir)[0] == 0                        # the one resume command
    assert len(trained) == 2 and first_herding not in trained             # only the unfinished seeds
    whole, resumed = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("whole", "run"))
    assert resumed["methods"] == whole["methods"]
    assert not list(run_dir.glob("eval_seeds*"))


def test_expert_write_interrupted_leaves_no_expert(tmp_path, cache_dir, monkeypatch):
    import vldistill.runtime.io as vio
    from vldistill.buffer.store import Snapshot, TrajectoryStore
    store = TrajectoryStore(copy_store(cache_dir, tmp_path / "store"))
    real_save = vio.save_file

    def save_half_then_die(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:64])
        raise KeyboardInterrupt                        # Ctrl-C in the middle of the write
    monkeypatch.setattr(vio, "save_file", save_half_then_die)
    snap = store.load(0, 0)
    with pytest.raises(KeyboardInterrupt):
        store.write_expert(1, {0: snap, 1: Snapshot(snap.image.clone(), snap.text.clone())}, {})
    assert store.experts() == [0] and not store.expert_path(1).exists()
    assert not list(store.dir.glob(".*.tmp"))


def test_damaged_expert_file_is_named(tmp_path, cache_dir, tiny_cfg, tiny_data):
    from vldistill.buffer.store import TrajectoryStore, store_manifest
    from vldistill.models.student import build_student
    store = TrajectoryStore(copy_store(cache_dir, tmp_path / "store"))
    data = store.expert_path(0).read_bytes()
    store.expert_path(1).write_bytes(data[: len(data) // 3])     # e.g. a copy cut short by a full disk
    cfg = tiny_cfg(*FAST)
    expected = store_manifest(cfg, tiny_data, build_student(cfg.model, tiny_data.dataset.image_size,
                                                           tiny_data.text_dim, seed=0))
    with pytest.raises(UserError, match=r"expert_001\.safetensors is damaged .*rerun `vldistill buffer`"):
        store.check(expected)
