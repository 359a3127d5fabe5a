"""One writer per run directory: a lock file that a second process finds and refuses.

`RUN_DIR/run.lock` holds JSON naming its owner: host, pid, the process's start time (so a
recycled pid is not mistaken for the owner), the scheduler job it ran under, the command and a
random token. It is created atomically -- written to a temporary file, then hard-linked into
place, which fails if the lock exists -- so a reader never sees a half-written lock and two
starters cannot both win, also on the shared (NFS) file systems multi-node buffers use.

When a lock exists, it is taken over without asking when its owner is provably gone, and the
log says so in one line:
- same host, and its pid is not running, or runs another process (the start time differs);
- same scheduler job (SLURM_JOB_ID, and the array job and task ids), from another host too: a
  requeued job's earlier run was ended by the scheduler. If both record SLURM_RESTART_COUNT the
  lock's must be lower than ours (a concurrent task of the same run is refused).
A live owner on this host is always refused. What cannot be proved -- a lock from another host
without a matching job, an unreadable lock -- is taken over only on the user's word
(`vldistill ... --force-unlock`). Taking a lock this process already holds is allowed
(re-entrant); locks are released when the holder's block ends, and at interpreter exit.

(filelock's SoftFileLock reclaims dead same-host owners too, but knows no scheduler jobs, keeps
no command to name the owner in a refusal, and waits instead of refusing; hence this module.)
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
UNREADABLE = "unreadable"
_JOB_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")


class RunLockedError(UserError):
    """Another live process writes this run directory."""


class StaleLockError(UserError):
    """A lock whose owner cannot be proved gone; `--force-unlock` takes it over."""


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


def _scheduler_job() -> tuple[str | None, int | None]:
    """This process's scheduler job ("JOB[/ARRAY_JOB/TASK]") and restart count, if any."""
    ids = [os.environ.get(name) for name in _JOB_VARIABLES]
    job = "/".join(i for i in ids if i) if ids[0] else None
    restarts = os.environ.get("SLURM_RESTART_COUNT")
    return job, int(restarts) if restarts and restarts.isdigit() else None


@dataclass(frozen=True, kw_only=True)
class Owner:
    """Who holds a lock."""

    host: str
    pid: int
    start: str | None
    token: str
    command: str = ""
    since: float = 0.0
    job: str | None = None          # scheduler job it ran under
    restarts: int | None = None     # SLURM_RESTART_COUNT of that run

    @classmethod
    def me(cls) -> "Owner":
        pid = os.getpid()
        job, restarts = _scheduler_job()
        return cls(host=socket.gethostname(), pid=pid, start=_process_start(pid),
                   token=secrets.token_hex(8), command=" ".join(sys.argv)[:300], since=time.time(),
                   job=job, restarts=restarts)

    def same_process(self, other: "Owner") -> bool:
        return (self.host, self.pid, self.start) == (other.host, other.pid, other.start)

    def alive_here(self) -> bool:
        """On this host, and its process still runs (not a recycled pid)."""
        if self.host != socket.gethostname() or not _pid_running(self.pid):
            return False
        start = _process_start(self.pid)
        return start is None or self.start is None or start == self.start

    def gone_because(self, me: "Owner") -> str | None:
        """Why this owner is provably gone (None: it cannot be proved from here)."""
        if self.token == UNREADABLE:
            return None
        if self.host == me.host:
            if not _pid_running(self.pid):
                return "its process is no longer running"
            return None if self.alive_here() else "its pid now belongs to another process"
        earlier = self.restarts is None or me.restarts is None or self.restarts < me.restarts
        if self.job is not None and self.job == me.job and earlier:
            return f"it was written by an earlier run of scheduler job {self.job} (requeued)"
        return None

    def describe(self) -> str:
        if self.token == UNREADABLE:
            return "an unreadable lock file"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)) if self.since else "?"
        job = f", job {self.job}" if self.job else ""
        return f"pid {self.pid} on {self.host}{job} since {when} ({self.command or 'unknown command'})"


_HELD: dict[Path, "RunLock"] = {}


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
        return Owner(host=data["host"], pid=int(data["pid"]), start=data.get("start"),
                     token=data["token"], command=data.get("command", ""),
                     since=float(data.get("since", 0.0)), job=data.get("job"), restarts=data.get("restarts"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return Owner(host="?", pid=-1, start=None, token=UNREADABLE)


def _try_create(path: Path, owner: Owner) -> bool:
    """Create the lock file with its full content, atomically; False if one exists."""
    tmp = path.with_name(f".{path.name}.{owner.token}.tmp")
    tmp.write_text(json.dumps(asdict(owner)) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def acquire(folder: str | Path, force_unlock: bool = False) -> RunLock:
    """Lock `folder` for this process, or raise a UserError that says who holds it.

    Args:
        folder: the run directory (created if missing).
        force_unlock: also take over a lock whose owner cannot be proved gone (another host
            without a matching scheduler job, an unreadable lock); never a live local owner.

    Returns:
        The held lock; call `release()` when done (it is also released at exit).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
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
        if owner.alive_here():
            raise RunLockedError(_in_use(folder, owner))
        reason = owner.gone_because(me) or ("--force-unlock was given" if force_unlock else None)
        if reason is None:
            why = ("it cannot be read" if owner.token == UNREADABLE else
                   "its owner runs on another host and is not an earlier run of this scheduler "
                   "job, so it cannot be checked from here")
            raise StaleLockError(f"{folder} has a lock from {owner.describe()}: {why}; if no process "
                                 f"writes this run any more, rerun with --force-unlock (or delete {path})")
        if _take_over(path, owner, me):
            log.warning("%s: took over the lock of %s: %s", folder, owner.describe(), reason)
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


def _in_use(folder: Path, owner: Owner) -> str:
    return f"{folder} is in use by {owner.describe()}: wait for it to finish or stop it, or use another run_dir"


def in_use(folder: str | Path) -> str | None:
    """Why `acquire` would refuse `folder` for sure (a live process on this host holds it), or None;
    the pre-flight's check, which takes nothing."""
    owner = lock_owner(folder)
    if owner is None or owner.same_process(Owner.me()) or not owner.alive_here():
        return None
    return _in_use(Path(folder), owner)


def lock_owner(folder: str | Path) -> Owner | None:
    """Who holds the lock of `folder`, if anyone (for messages and tests)."""
    return _read_owner(Path(folder) / LOCK_NAME)


def release_all() -> None:
    """Give up every lock this process holds (the CLI's last step; also run at exit)."""
    for lock in list(_HELD.values()):
        lock.depth = 1
        lock.release()


atexit.register(release_all)
