"""One writer per run directory: a live owner is refused, a provably dead one (same host, or an
earlier run of the same scheduler job) is taken over and logged, anything else needs
--force-unlock, and the lock is released however the command ends."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from reliability_helpers import FAST, run_cli, tiny_store
from vldistill.runtime import runlock
from vldistill.runtime.runlock import RunLockedError, StaleLockError

HOLD = ("import sys, time; from vldistill.runtime import runlock; runlock.acquire(sys.argv[1]); "
        "print('locked', flush=True); time.sleep(600)")


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/run (killed at the end of the test)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def test_live_owner_refuses_a_second_writer(tmp_path, holder, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(RunLockedError, match=rf"in use by pid {holder.pid} on {socket.gethostname()}"):
        runlock.acquire(run_dir)
    with pytest.raises(RunLockedError):               # --force-unlock never overrides a live owner
        runlock.acquire(run_dir, force_unlock=True)
    code, err = run_cli(capsys, "distill", "configs/tiny.yaml", f"run_dir={run_dir}", "--force-unlock")
    assert code == 2 and f"in use by pid {holder.pid}" in err
    assert not (run_dir / "config.yaml").exists()     # refused before writing anything
    assert runlock.lock_owner(run_dir).pid == holder.pid


def test_dead_owner_is_taken_over_without_a_flag_and_logged(tmp_path, holder, caplog):
    run_dir = tmp_path / "run"
    holder.kill()                                      # SIGKILL: no clean-up ran
    holder.wait()
    with caplog.at_level(logging.WARNING, logger="vldistill.runtime.runlock"):
        lock = runlock.acquire(run_dir)
    assert runlock.lock_owner(run_dir).pid == os.getpid()
    assert f"took over the lock of pid {holder.pid}" in caplog.text and "no longer running" in caplog.text
    lock.release()
    assert runlock.lock_owner(run_dir) is None


def _plant(run_dir, **owner):
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "start": None, "token": "x",
              "command": "vldistill run", "since": time.time()} | owner
    (run_dir / runlock.LOCK_NAME).write_text(json.dumps(record))


def test_recycled_pid_is_taken_over_other_host_and_garbage_need_the_flag(tmp_path, caplog):
    # a live pid that now belongs to another process (its start time differs) is not the owner
    _plant(tmp_path / "a", pid=os.getppid(), start="1")
    with caplog.at_level(logging.WARNING, logger="vldistill.runtime.runlock"):
        runlock.acquire(tmp_path / "a").release()
    assert "its pid now belongs to another process" in caplog.text
    # another host cannot be checked from here: reported, taken over only on the user's word
    _plant(tmp_path / "b", host="some-other-node")
    with pytest.raises(StaleLockError, match="on some-other-node .*cannot be checked from here.*--force-unlock"):
        runlock.acquire(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / runlock.LOCK_NAME).write_text("{not json")
    with pytest.raises(StaleLockError, match="an unreadable lock file: it cannot be read"):
        runlock.acquire(tmp_path / "c")
    for name in "bc":                                  # what --force-unlock does in the CLI
        runlock.acquire(tmp_path / name, force_unlock=True).release()
    assert all(runlock.lock_owner(tmp_path / name) is None for name in "abc")


@pytest.mark.parametrize("env,owner,taken", [
    ({"SLURM_JOB_ID": "123"}, {"job": "123"}, True),                         # requeued job
    ({"SLURM_JOB_ID": "456"}, {"job": "123"}, False),                        # another job
    ({}, {"job": "123"}, False),                                             # not under a scheduler
    ({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2"}, {"job": "7/7/2"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3"}, {"job": "7/7/2"}, False),
    ({"SLURM_JOB_ID": "123", "SLURM_RESTART_COUNT": "2"}, {"job": "123", "restarts": 1}, True),
    ({"SLURM_JOB_ID": "123", "SLURM_RESTART_COUNT": "1"}, {"job": "123", "restarts": 1}, False),  # same run
])
def test_lock_of_the_same_scheduler_job_on_another_host_is_taken_over(tmp_path, monkeypatch, env, owner, taken):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _plant(tmp_path, host="node-that-was-preempted", pid=4242, **owner)
    if taken:
        lock = runlock.acquire(tmp_path)
        assert runlock.lock_owner(tmp_path).job == "/".join(
            env[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID") if k in env)
        lock.release()
    else:
        with pytest.raises(StaleLockError, match="not an earlier run of this scheduler job"):
            runlock.acquire(tmp_path)
        assert runlock.lock_owner(tmp_path).pid == 4242


def test_same_process_may_reopen_and_release_is_counted(tmp_path):
    first = runlock.acquire(tmp_path)
    second = runlock.acquire(tmp_path)                 # e.g. open_run twice in one script
    assert second is first
    second.release()
    assert runlock.lock_owner(tmp_path).pid == os.getpid()     # still held by the outer user
    first.release()
    assert runlock.lock_owner(tmp_path) is None


def test_cli_releases_the_lock_after_an_error(tmp_path, cache_dir, capsys):
    run_dir = tmp_path / "run"          # an error the pre-flight cannot see: a store of another tower
    code, err = run_cli(capsys, "distill", "configs/tiny.yaml", f"run_dir={run_dir}", f"cache_dir={cache_dir}",
                        f"buffer.dir={tiny_store(cache_dir)}", "eval.methods=[lors]", "model.image_tower_args.convnet.width=16", *FAST)
    assert code == 2 and 'was made with image_tower_args={"width": 8, "depth": 2}, this run has image_tower_args={"width": 16' in err
    assert (run_dir / "config.yaml").is_file() and runlock.lock_owner(run_dir) is None


def test_only_rank_0_of_a_torchrun_job_asks_whether_the_run_dir_is_in_use(tmp_path, holder, monkeypatch):
    """Rank 0 takes the lock; the other ranks' pre-flight must not refuse over it (the lock of
    their own job's rank 0 looks like any live owner)."""
    from vldistill.configio import load_config
    from vldistill.preflight import _folders
    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert [p.key for p in _folders(cfg, "eval")] == ["run_dir"]
    monkeypatch.setenv("RANK", "1")
    assert _folders(cfg, "eval") == []
