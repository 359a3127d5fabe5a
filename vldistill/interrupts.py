"""SIGTERM and Ctrl-C that end a run cleanly instead of mid-write.

Schedulers stop jobs with SIGTERM (then SIGKILL after a grace period); Python's default for
SIGTERM is to die on the spot, skipping `finally` blocks, so the run lock would stay behind.
`terminate_as_interrupt()` turns SIGTERM into an `Interrupted` exception (a KeyboardInterrupt),
so clean-up code runs as for Ctrl-C.

Inside a loop that must not be cut mid-update (a distillation iteration changes several
tensors and the optimizer), `deferred_interrupts()` only records the signal; the loop checks
`.requested` after each iteration, writes its checkpoint and raises `Interrupted` itself. A
second signal while one is pending raises at once (the user insists; the last checkpoint
stays).

Signal handlers can only be set from the main thread; elsewhere both helpers do nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Interrupted(SIGTERM)` like Ctrl-C raises KeyboardInterrupt."""
    if not _main_thread():
        yield
        return

    def raise_interrupted(signum, _frame):
        raise Interrupted(signum)
    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
def deferred_interrupts(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[Deferred]:
    """Record SIGINT/SIGTERM instead of raising, until the block ends; a second one raises."""
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
