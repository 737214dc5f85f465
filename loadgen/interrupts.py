"""SIGINT and SIGTERM, handled alike at every phase of a run.

Ctrl-C, ``timeout``, CI cancellation, Kubernetes, Slurm and ``docker stop`` all mean
"stop now, but keep what you have". So:

* before a point's run (pre-flight, prompt building) there is nothing to lose: the
  signal raises :class:`Interrupted` at once and the CLI says nothing was measured;
* during a run the runner's own loop handler stops releasing requests, gives those
  in flight ``--grace`` seconds and returns a partial point (a second signal ends
  the grace period);
* while a point's results are computed and written (:func:`deferred`), a signal is
  only noted; it is raised once the files are complete.

The exit status is the shell's convention, 128 + the signal number (130, 143).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``exit_code`` is 128 + its number.

    ``results`` collects what was written before it propagated (the result of each
    finished point), so the caller can say truthfully what was kept.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.results: list = []

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class _State:
    pid = 0  # the process that installed the handler
    depth = 0  # how many deferred() blocks are open
    pending: int | None = None  # a signal noted inside one


def _handler(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _State.pid:
        # A forked helper (a prompt-building worker) inherited the handler: it has
        # nothing to keep, so it takes the signal's default action, quietly.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _State.depth:
        _State.pending = _State.pending or signum
        return
    raise Interrupted(signum)


def saved() -> dict[int, object]:
    """The current handlers of :data:`SIGNALS`, for :func:`restore`."""
    return {sig: signal.getsignal(sig) for sig in SIGNALS}


def restore(previous: dict[int, object]) -> None:
    """Put back handlers saved with :func:`saved` (whoever took the signals meanwhile)."""
    for sig, prev in previous.items():
        signal.signal(sig, prev if prev is not None else signal.SIG_DFL)  # type: ignore[arg-type]


def install() -> None:
    """Route SIGINT and SIGTERM through :func:`_handler` (main thread only)."""
    _State.pid = os.getpid()
    for sig in SIGNALS:
        signal.signal(sig, _handler)


def note(signum: int) -> None:
    """Record a signal that something else (the runner's loop) already acted on."""
    _State.pending = _State.pending or signum


@contextmanager
def deferred() -> Iterator[None]:
    """Finish the block whatever arrives; then raise :class:`Interrupted` if a signal came."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
    if not _State.depth and _State.pending is not None:
        signum, _State.pending = _State.pending, None
        raise Interrupted(signum)
