"""One writer per run directory: a lock file that a second process finds and refuses.

`RUN_DIR/run.lock` holds JSON naming its owner: host, pid, the process's start time (so a
recycled pid is not mistaken for the owner), the command and a random token. It is created
atomically -- written to a temporary file, then hard-linked into place, which fails if the
lock already exists -- so a reader never sees a half-written lock and two starters cannot
both win.

A lock whose owner is gone (same host, pid not running or running a different process) is
stale: it is reported, and taken over only when asked (`vldistill ... --force-unlock`),
because a killed run may have been killed on purpose. A lock held by another host cannot be
checked from here; `--force-unlock` takes it over too, on the user's word. A live owner on
this host is never overridden.

The CLI's `--force-unlock` reaches `acquire` through `takeover_allowed()`, a block around
the command, so the stages need not pass a flag around. Locks are released when the holder's
block ends (`release`), and at interpreter exit.
Taking a lock the same process already holds is allowed (re-entrant), so library code can
call `open_run` twice in one process.
"""
from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import UserError

LOCK_NAME = "run.lock"
UNREADABLE = "unreadable"


class RunLockedError(UserError):
    """Another live process writes this run directory."""


class StaleLockError(UserError):
    """A lock whose owner is gone (or cannot be checked); `--force-unlock` takes it over."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (Linux), to tell a recycled pid from the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]          # field 22: starttime, in clock ticks


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True             # exists, owned by someone else
    return True


@dataclass(frozen=True)
class Owner:
    """Who holds a lock."""

    host: str
    pid: int
    start: str | None
    token: str
    command: str = ""
    since: float = 0.0

    @classmethod
    def me(cls) -> "Owner":
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_start(pid), secrets.token_hex(8),
                   " ".join(sys.argv)[:300], time.time())

    def same_process(self, other: "Owner") -> bool:
        return (self.host, self.pid, self.start) == (other.host, other.pid, other.start)

    def alive(self) -> bool | None:
        """True/False on this host; None when the owner runs elsewhere (cannot be checked)."""
        if self.host != socket.gethostname():
            return None
        if not _pid_running(self.pid):
            return False
        start = _process_start(self.pid)
        return start is None or self.start is None or start == self.start

    def describe(self) -> str:
        if self.token == UNREADABLE:
            return "an unreadable lock file"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)) if self.since else "?"
        return f"pid {self.pid} on {self.host} since {when} ({self.command or 'unknown command'})"


_HELD: dict[Path, "RunLock"] = {}
_TAKEOVER = contextvars.ContextVar("vldistill_force_unlock", default=False)


@contextlib.contextmanager
def takeover_allowed(allowed: bool = True) -> Iterator[None]:
    """Within the block, `acquire` takes over stale locks (the CLI's --force-unlock)."""
    token = _TAKEOVER.set(allowed)
    try:
        yield
    finally:
        _TAKEOVER.reset(token)


@dataclass
class RunLock:
    """A lock this process holds on a folder; `release()` (or leaving `with`) gives it up."""

    path: Path
    owner: Owner
    depth: int = 1

    def release(self) -> None:
        self.depth -= 1
        if self.depth > 0:
            return
        _HELD.pop(self.path, None)
        if os.getpid() != self.owner.pid:       # a forked child (DataLoader worker) owns nothing
            return
        current = _read_owner(self.path)
        if current is not None and current.token == self.owner.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(path: Path) -> Owner | None:
    try:
        data = json.loads(path.read_text())
        return Owner(data["host"], int(data["pid"]), data.get("start"), data["token"],
                     data.get("command", ""), float(data.get("since", 0.0)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return Owner("?", -1, None, UNREADABLE)


def _try_create(path: Path, owner: Owner) -> bool:
    """Create the lock file with its full content, atomically; False if one exists."""
    tmp = path.with_name(f".{path.name}.{owner.token}.tmp")
    tmp.write_text(json.dumps(owner.__dict__) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def acquire(folder: str | Path, force_unlock: bool | None = None) -> RunLock:
    """Lock `folder` for this process, or raise a UserError that says who holds it.

    Args:
        folder: the run directory (created if missing).
        force_unlock: take over a stale lock (owner dead) or one held on another host;
            None: as the enclosing `takeover_allowed()` block says (default: no).

    Returns:
        The held lock; call `release()` when done (it is also released at exit).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    force_unlock = _TAKEOVER.get() if force_unlock is None else force_unlock
    path = (folder / LOCK_NAME).resolve()
    if path in _HELD:
        _HELD[path].depth += 1
        return _HELD[path]
    me = Owner.me()
    for _ in range(3):          # a lock released or taken over between our checks: look again
        if _try_create(path, me):
            _HELD[path] = RunLock(path, me)
            return _HELD[path]
        owner = _read_owner(path)
        if owner is None:
            continue
        if owner.same_process(me):
            _HELD[path] = RunLock(path, owner)      # ours from an earlier open in this process
            return _HELD[path]
        alive = owner.alive()
        if alive:
            raise RunLockedError(f"{folder} is in use by {owner.describe()}: wait for it to finish "
                                 "or stop it, or use another run_dir")
        if not force_unlock:
            why = ("its process is no longer running" if alive is False
                   else "its owner cannot be checked from this host")
            raise StaleLockError(f"{folder} has a stale lock from {owner.describe()}: {why}; "
                                 "if no process writes this run any more, rerun with --force-unlock "
                                 f"to take it over (or delete {path})")
        if _take_over(path, owner, me):
            _HELD[path] = RunLock(path, me)
            return _HELD[path]
    raise RunLockedError(f"{folder}: could not take the lock {path} (another process keeps "
                         "taking it); check what else runs on this folder")


def _take_over(path: Path, stale: Owner, me: Owner) -> bool:
    """Replace a stale lock by ours, unless another process replaced it first.

    The lock is renamed aside (atomic: one renamer wins) and checked to be the one judged
    stale; a fresh lock renamed by mistake is linked back, unless yet another appeared.
    """
    aside = path.with_name(f".{path.name}.{me.token}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    moved = _read_owner(aside)
    if moved is not None and moved.token != stale.token:
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return _try_create(path, me)


def lock_owner(folder: str | Path) -> Owner | None:
    """Who holds the lock of `folder`, if anyone (for messages and tests)."""
    return _read_owner(Path(folder) / LOCK_NAME)


def release_all() -> None:
    """Give up every lock this process holds (the CLI's last step; also run at exit)."""
    for lock in list(_HELD.values()):
        lock.depth = 1
        lock.release()


atexit.register(release_all)
