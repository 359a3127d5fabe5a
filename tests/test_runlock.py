"""One writer per run directory: a live owner is refused, a dead one is reported and taken over
only with --force-unlock, and the lock is released however the command ends."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from reliability_helpers import run_cli
from vldistill import runlock
from vldistill.runlock import RunLockedError, StaleLockError

HOLD = ("import sys, time; from vldistill import runlock; runlock.acquire(sys.argv[1]); "
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


def test_dead_owner_is_reported_then_taken_over_with_the_flag(tmp_path, holder):
    run_dir = tmp_path / "run"
    holder.kill()                                      # SIGKILL: no clean-up ran
    holder.wait()
    with pytest.raises(StaleLockError, match=rf"stale lock from pid {holder.pid} .*no longer running.*--force-unlock"):
        runlock.acquire(run_dir)
    lock = runlock.acquire(run_dir, force_unlock=True)
    assert runlock.lock_owner(run_dir).pid == os.getpid()
    lock.release()
    assert runlock.lock_owner(run_dir) is None


def _plant(run_dir, **owner):
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "start": None, "token": "x",
              "command": "vldistill run", "since": time.time()} | owner
    (run_dir / runlock.LOCK_NAME).write_text(json.dumps(record))


def test_recycled_pid_other_host_and_garbage_are_stale(tmp_path):
    # a live pid that now belongs to another process (its start time differs) is not the owner
    _plant(tmp_path / "a", pid=os.getppid(), start="1")
    with pytest.raises(StaleLockError, match="no longer running"):
        runlock.acquire(tmp_path / "a")
    # another host cannot be checked from here: reported, taken over only on the user's word
    _plant(tmp_path / "b", host="some-other-node")
    with pytest.raises(StaleLockError, match="on some-other-node .*its owner cannot be checked"):
        runlock.acquire(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / runlock.LOCK_NAME).write_text("{not json")
    with pytest.raises(StaleLockError, match="an unreadable lock file"):
        runlock.acquire(tmp_path / "c")
    with runlock.takeover_allowed():                   # what --force-unlock does in the CLI
        for name in "abc":
            runlock.acquire(tmp_path / name).release()
    assert all(runlock.lock_owner(tmp_path / name) is None for name in "abc")


def test_same_process_may_reopen_and_release_is_counted(tmp_path):
    first = runlock.acquire(tmp_path)
    second = runlock.acquire(tmp_path)                 # e.g. open_run twice in one script
    assert second is first
    second.release()
    assert runlock.lock_owner(tmp_path).pid == os.getpid()     # still held by the outer user
    first.release()
    assert runlock.lock_owner(tmp_path) is None


def test_cli_releases_the_lock_after_an_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, err = run_cli(capsys, "distill", "configs/tiny.yaml", f"run_dir={run_dir}",
                        f"buffer.dir={tmp_path / 'no-store'}", "eval.methods=[lors]")
    assert code == 2 and "no trajectory store" in err
    assert (run_dir / "config.yaml").is_file() and runlock.lock_owner(run_dir) is None
