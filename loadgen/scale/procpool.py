"""Worker processes on this machine (``--workers N``): fork, a start barrier, signals.

Workers are forked after the prompt set is built, so they share it copy-on-write and
start in milliseconds (nothing is imported or pickled on the way in); where ``fork``
does not exist they are spawned. Each worker is its own session (a Ctrl-C on the
terminal reaches only the parent, which passes each signal on exactly once) and is
sent SIGTERM by the kernel if the parent dies.

Parent ↔ worker, over one pipe each, never during the measured phase except the
final result:

1. worker → ``("ready", None)`` once its warm-up is done and its first wave's
   connections are open (inside the runner's ``clock_start`` hook);
2. parent → ``("start", t_ns)`` when every worker is ready (or finished, or dead):
   ``t_ns = now + START_MARGIN_S`` on CLOCK_MONOTONIC (``perf_counter_ns``), which is
   one clock for every process on a Linux machine, so all workers release against
   the same origin;
3. worker → ``("result", WorkerResult)`` at the end (or ``("error", text)``).

Live progress goes through a shared array of counters that each worker writes on its
progress timer and the parent sums on its own.

A worker that dies (killed, crashed) is noticed by its process sentinel: the others
run on, and the point is marked partial, naming it. A worker that stops without
dying (``kill -STOP``, a hung process) is noticed by its heartbeat: a thread in each
worker bumps its slot of a shared array every :data:`HEARTBEAT_S`; a slot that has
not moved for :data:`HUNG_AFTER_S` means the whole process is stopped, so the parent
kills it and treats it as dead. A worker whose process runs but whose event loop is stuck
(a blocking call, a busy loop) is noticed by a second heartbeat that comes from the loop
itself: the runner's progress timer, which publishes the live counters anyway, bumps a
slot of another shared array (nothing per request). From the common start until the
loop's part is over, a slot silent for :data:`LOOP_SILENT_AFTER_S` gets the worker
killed and named the same way; a timed point's worker that has not finished by the
start + ``--duration`` + ``--grace`` + :data:`STOP_SLACK_S` too. After a stop signal the workers get their grace
period plus :data:`STOP_SLACK_S` to hand back their results; whoever has not by then
is killed, so SIGTERM/SIGINT end the parent in bounded time whatever the workers do.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from time import perf_counter_ns
from typing import Any

from loadgen import interrupts
from loadgen.interrupts import SIGNALS
from loadgen.scale.worker import (
    START_MARGIN_S,
    TICK_S,
    SummedCounters,
    WorkerOutcome,
    WorkerTask,
    run_worker,
    tick_if_due,
)

JOIN_TIMEOUT_S = 10.0
HEARTBEAT_S = 0.2
HUNG_AFTER_S = 5.0  # 25 missed beats: a thread that wakes 5x/s is not that late on a busy machine
STOP_SLACK_S = 10.0  # after a stop signal: the grace period plus this, then the worker is killed
# The event loop's heartbeat is the runner's progress timer (every TICK_S): silent for 40
# ticks, and at least twice the process heartbeat's limit (so a stopped process is named as
# one), the loop is stuck while its process runs.
LOOP_SILENT_AFTER_S = max(2 * HUNG_AFTER_S, 40 * TICK_S)
DONE = -1  # a loop slot's value once the loop's part is over


def _heartbeat(beats: Any, index: int) -> None:
    """Bump this worker's slot forever (a daemon thread: it ends with the process)."""
    while True:
        beats[index] += 1
        time.sleep(HEARTBEAT_S)


class Watch:
    """The parent's view of one kind of heartbeat: which watched workers have been silent too long.

    A worker is watched from :meth:`arm` on; a slot set to :data:`DONE` is no longer watched."""

    def __init__(self, beats: Any, n: int, after_s: float, now: float | None = None) -> None:
        self.beats = beats
        self.after_s = after_s
        self.seen: list[tuple[int, float] | None] = [None if now is None else (0, now)] * n

    def arm(self, i: int, now: float) -> None:
        self.seen[i] = (self.beats[i], now)

    def silent(self, i: int, now: float) -> bool:
        seen, value = self.seen[i], self.beats[i]
        if seen is None or value == DONE:
            return False
        if value != seen[0]:
            self.seen[i] = (value, now)
            return False
        return now - seen[1] > self.after_s


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the parent exits, so no worker outlives a killed run."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class PipeControl:
    """The worker's side of the protocol above."""

    def __init__(self, conn: Connection, rows: Any, index: int, early: list[int], loops: Any = None) -> None:
        self.conn = conn
        self.counters = SummedCounters(0, rows)
        self.index = index
        self.early = early
        self.loops = loops if loops is not None else [0] * (index + 1)

    async def start(self) -> int:
        self.conn.send(("ready", None))
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = self.conn.fileno()
        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, ready)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
            # the loop made the pipe non-blocking: a result larger than the pipe's buffer would
            # then fail to send (EAGAIN) and the worker's whole share would be lost
            os.set_blocking(fd, True)
        kind, value = self.conn.recv()  # EOFError: the parent is gone, and so is this run
        if kind != "start":
            raise RuntimeError(f"worker {self.index}: expected the start instant, got {kind!r}")
        return int(value)

    def publish(self, counters: Any) -> None:
        """Called on the runner's progress timer, inside the event loop: also the loop's heartbeat."""
        self.counters.set(self.index, counters)
        self.loops[self.index] += 1

    def loop_done(self) -> None:
        self.loops[self.index] = DONE

    def on_stop(self, stop: Callable[[int], None]) -> None:
        if self.early:  # a signal that came before the runner's own handlers
            stop(self.early[0])


def _child(task: WorkerTask, conn: Connection, rows: Any, beats: Any, loops: Any) -> None:
    os.setsid()
    _die_with_parent()
    threading.Thread(target=_heartbeat, args=(beats, task.index), name="loadgen-heartbeat", daemon=True).start()
    early: list[int] = []
    for sig in SIGNALS:
        signal.signal(sig, lambda signum, frame: early.append(signum))
    gc.freeze()  # the parent's heap stays shared: collections leave it alone
    try:
        result = run_worker(task, PipeControl(conn, rows, task.index, early, loops))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit non-zero
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:300]))
        except OSError:
            pass
        os._exit(1)
    try:
        conn.send(("result", result))
    except OSError:
        os._exit(1)


def exit_reason(exitcode: int | None, message: str | None) -> str:
    """How a worker without a result ended, in words."""
    if exitcode is not None and exitcode < 0:
        return f"was killed by {_name(-exitcode)}"
    return f"exited with code {exitcode}" + (f" ({message})" if message else "")


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _kill(proc: Any, why: str) -> str:
    """SIGKILL a worker that will not report (a stopped process takes nothing else); the reason, as recorded."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.join(JOIN_TIMEOUT_S)
    return f"was killed with SIGKILL: {why}"


def run_tasks(tasks: Sequence[WorkerTask], *, counters: SummedCounters, on_tick: Callable[[], Any],
              address: str | None = None, tick_s: float = 0.25,
              on_started: Callable[[], Any] | None = None) -> list[WorkerOutcome]:
    """Run every task in its own process; returns one outcome per task, in order."""
    del address
    n = len(tasks)
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork") if "fork" in methods else multiprocessing.get_context("spawn")
    rows = ctx.RawArray("q", n * len(SummedCounters.FIELDS))
    beats = ctx.RawArray("q", n)
    loops = ctx.RawArray("q", n)
    counters.rows = rows
    conns: list[Connection] = []
    procs = []
    for task in tasks:
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(task, child_end, rows, beats, loops), name=f"loadgen-worker-{task.index}",
                           daemon=True)
        proc.start()
        child_end.close()
        conns.append(parent_end)
        procs.append(proc)
    if on_started is not None:
        on_started()
    outcomes = [WorkerOutcome(t.index, store=t.store) for t in tasks]
    messages: list[str | None] = [None] * n
    ready: set[int] = set()
    done: set[int] = set()
    closed: set[int] = set()
    started = False
    start_at = 0.0
    seen: list[int] = []
    watch = Watch(beats, n, HUNG_AFTER_S, time.monotonic())
    loop_watch = Watch(loops, n, LOOP_SILENT_AFTER_S)  # armed at the start
    finish_by: list[float] = []  # the point's own end: start + duration + grace + slack (timed points)
    stop_by: list[float] = []  # when workers that ignore a stop signal are killed
    stop_after_s = max(t.grace_s for t in tasks) + STOP_SLACK_S

    def forward(signum: int, frame: Any) -> None:
        seen.append(signum)
        stop_by.append(time.monotonic() + stop_after_s)
        for i, p in enumerate(procs):
            if i not in done and p.pid is not None:
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass

    previous = interrupts.saved()
    for sig in SIGNALS:
        signal.signal(sig, forward)
    next_tick = time.monotonic() + tick_s
    try:
        while len(done) < n:
            live = [i for i in range(n) if i not in done]
            wait([conns[i] for i in live if i not in closed] + [procs[i].sentinel for i in live],
                 timeout=max(0.0, next_tick - time.monotonic()))
            for i in live:
                while i not in closed and conns[i].poll():
                    try:
                        kind, value = conns[i].recv()
                    except (EOFError, OSError):
                        closed.add(i)
                        break
                    if kind == "ready":
                        ready.add(i)
                    elif kind == "result":
                        outcomes[i].result = value
                        done.add(i)
                    elif kind == "error":
                        messages[i] = str(value)
                now = time.monotonic()
                if i not in done and procs[i].is_alive():
                    if watch.silent(i, now):
                        outcomes[i].error = _kill(procs[i], f"it stopped reporting for {HUNG_AFTER_S:g} s "
                                                            "(hung or stopped)")
                    elif loop_watch.silent(i, now):
                        outcomes[i].error = _kill(procs[i], f"its event loop made no progress for "
                                                            f"{LOOP_SILENT_AFTER_S:g} s (stuck while its process ran)")
                    elif finish_by and now > finish_by[0] and loops[i] != DONE:
                        outcomes[i].error = _kill(procs[i], f"it had not finished {finish_by[0] - start_at:.0f} s "
                                                            "after the start (--duration + --grace + 10 s)")
                    elif stop_by and now > stop_by[0]:
                        outcomes[i].error = _kill(procs[i], f"it did not stop within {stop_after_s:g} s of "
                                                            f"{_name(seen[0])}")
                if i not in done and not procs[i].is_alive():
                    procs[i].join()
                    outcomes[i].error = outcomes[i].error or exit_reason(procs[i].exitcode, messages[i])
                    done.add(i)
            if not started and all(i in ready or i in done for i in range(n)):
                started = True
                start = perf_counter_ns() + int(START_MARGIN_S * 1e9)
                start_at = time.monotonic() + START_MARGIN_S
                if all(t.duration_s is not None for t in tasks):
                    finish_by.append(start_at + max(t.duration_s + t.grace_s for t in tasks  # type: ignore[operator]
                                                    ) + STOP_SLACK_S)
                for i in sorted(ready - done):
                    loop_watch.arm(i, start_at)
                    try:
                        conns[i].send(("start", start))
                    except OSError:
                        pass  # it died: its sentinel says so
            next_tick = tick_if_due(next_tick, tick_s, on_tick)
    finally:
        interrupts.restore(previous)
        for p in procs:
            p.join(JOIN_TIMEOUT_S)
            if p.is_alive():
                p.kill()
                p.join()
        for c in conns:
            c.close()
    if seen:
        interrupts.note(seen[0])
    return outcomes
