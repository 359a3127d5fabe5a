"""Signals that end a run cleanly instead of mid-write: Ctrl-C, and a scheduler's warning.

Schedulers stop jobs with SIGTERM (then SIGKILL after a grace period), and SLURM sends a signal
of the job's choice some seconds before its time limit (`#SBATCH --signal=B:USR1@300`).
Python's default for both is to die on the spot, skipping `finally` blocks, so the run lock
would stay behind. `terminate_as_interrupt()` turns SIGTERM and SIGUSR1 into an `Interrupted`
exception (a KeyboardInterrupt), so clean-up code runs as for Ctrl-C.

Inside a loop that must not be cut mid-update (a distillation iteration changes several
tensors and the optimizer), `deferred_interrupts()` only records the signal; the loop checks
`.requested` after each iteration, writes its checkpoint and raises `Interrupted` itself. A
second signal while one is pending raises at once (the user insists; the last checkpoint
stays). Elsewhere (an expert in training, an evaluation seed) the signal stops at once: what
is finished is on disk, the unfinished expert or seed is redone on resume.

Exit status: 130 for Ctrl-C; `REQUEUE_EXIT` (75, EX_TEMPFAIL: try again) for SIGTERM and
SIGUSR1, so a batch script can requeue on it and the log says plainly that the run stopped to
be resumed. Signal handlers can only be set from the main thread; elsewhere both helpers do
nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


REQUEUE_EXIT = 75                                     # EX_TEMPFAIL (sysexits.h)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal: 130 for Ctrl-C, `REQUEUE_EXIT` otherwise."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 130 if self.signum == signal.SIGINT else REQUEUE_EXIT


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGUSR1 raise `Interrupted` as Ctrl-C raises KeyboardInterrupt."""
    if not _main_thread():
        yield
        return

    def raise_interrupted(signum, _frame):
        raise Interrupted(signum)
    previous = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Deferred:
    """Signals received inside `deferred_interrupts()`; the loop checks `requested`."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def raise_if_requested(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


@contextlib.contextmanager
def deferred_interrupts(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[Deferred]:
    """Record SIGINT/SIGTERM/SIGUSR1 instead of raising, until the block ends; a second one raises."""
    deferred = Deferred()
    if not _main_thread():
        yield deferred
        return

    def record(signum, _frame):
        if deferred.requested:
            raise Interrupted(signum)
        deferred.signum = signum
    previous = {s: signal.signal(s, record) for s in signals}
    try:
        yield deferred
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
