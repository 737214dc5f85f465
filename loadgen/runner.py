"""Execute one load point: release prompts on schedule, gate concurrency, collect records.

    outcome = loadgen.runner.run(target, prompts, offsets_s, concurrency=..., warmup=..., ...)

``offsets_s`` are release times in seconds from the start (``loadgen.schedule``), or
``None``/all zeros for ``--rate inf``. Request ``i`` is released at the absolute time
``start + offsets_s[i]`` -- never after an accumulated sleep, so no drift builds up --
and that intended time is stored in its record (``intended_ns``). When the
concurrency gate is full a due request waits; the wait shows up as queue time
(``sent_ns - intended_ns``), which is how coordinated omission is made visible.

Everything that is not sending is kept off the critical path: a request's body is
serialised while the dispatcher waits for its release time (so a million prompts do
not become a million bodies in memory), the garbage collector is frozen and paused
for the run (a full collection over hundreds of thousands of stamps is a
multi-millisecond stall in the middle of someone's stream), and progress is read
from counters on a timer.

Finished requests go to a ``sink`` (:class:`loadgen.collect.PointCollector`), which
reduces them in batches on a timer and drops them, so memory stays flat however
long the run; without a sink they are returned in :attr:`RunOutcome.records` (tests,
benchmarks, notebooks).

SIGINT and SIGTERM are handled alike (:mod:`loadgen.interrupts`): the first stops
releasing and gives in-flight requests ``grace_s``; a second ends the grace period.
"""

from __future__ import annotations

import asyncio
import gc
import math
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any, Protocol

from loadgen import interrupts
from loadgen.client import ClientError, LiveCounters, StreamClient, Target
from loadgen.interrupts import SIGNALS
from loadgen.lag import LagMonitor
from loadgen.records import Prompt, RequestRecord
from loadgen.release import send, sleep_until

__all__ = ["LiveCounters", "RunOutcome", "Target", "run", "run_async"]

# Open the first wave's connections before the clock starts (at most this many).
MAX_PRECONNECT = 4096


class Sink(Protocol):
    """Receives finished requests during a run (see :class:`loadgen.collect.PointCollector`)."""

    def begin(self, start_ns: int) -> None: ...
    def push(self, rec: RequestRecord) -> None: ...
    def flush(self) -> bool: ...  # True: more is pending, call again soon


@dataclass
class RunOutcome:
    """What one load point produced; figures are computed from it by loadgen.metrics.

    ``records`` and ``warmup_records`` are empty when a sink took the requests.
    """

    records: list[RequestRecord]
    start_ns: int
    end_ns: int
    lag_samples_ns: list[int]
    partial: bool
    warmup_records: list[RequestRecord] = field(default_factory=list)
    signal: int | None = None  # the signal that stopped the run early
    max_in_flight: int = 0  # most requests between release and their end, at any moment


class _Stop:
    """Why and when releasing stopped; shared by the signal handler and the drain."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.signal: int | None = None
        self.interrupted = False
        self.requested = False  # releasing was stopped on purpose (duration or Ctrl-C)
        self.force = False
        self.event = asyncio.Event()
        self.dispatcher: asyncio.Task | None = None
        self.loop = loop
        self.sessions: object | None = None  # a SessionPlan: its sessions start no further turn

    def stop_releasing(self) -> None:
        self.requested = True
        if self.sessions is not None:
            self.sessions.stopped = True  # type: ignore[attr-defined]
        if self.dispatcher is not None and not self.dispatcher.done():
            self.dispatcher.cancel()

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        self.signal = self.signal or signum
        if self.interrupted:
            self.force = True  # a second Ctrl-C: no more grace
        self.interrupted = True
        self.stop_releasing()
        self.event.set()


def _validate(prompts: Sequence[Prompt], offsets_s: Sequence[float] | None, concurrency: int | None,
              warmup: int, duration_s: float | None, tick_s: float, grace_s: float) -> None:
    if offsets_s is not None and len(offsets_s) != len(prompts):
        raise ValueError(f"got {len(offsets_s)} release offsets for {len(prompts)} prompts; they must match")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 (or unset for no limit), got {concurrency}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 requests, got {warmup}")
    if warmup and not prompts:
        raise ValueError("warm-up needs at least one prompt")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration must be > 0 s, got {duration_s}")
    if not tick_s > 0:
        raise ValueError(f"tick interval must be > 0 s, got {tick_s}")
    if not grace_s >= 0:
        raise ValueError(f"grace period must be >= 0 s, got {grace_s}")
    if offsets_s is not None:
        for off in offsets_s:
            if not (off >= 0) or math.isinf(off):
                raise ValueError(f"release offsets must be finite and >= 0 s, got {off}")


class _InFlight:
    """Requests between release and end, and the most there ever were."""

    __slots__ = ("now", "peak")

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0


async def _dispatch(client: StreamClient, prompts: Sequence[Prompt], offsets_s: Sequence[float] | None,
                    gate: asyncio.Semaphore | None, start_ns: int, finished: Callable[[RequestRecord], None],
                    tasks: set[asyncio.Task], warmup: bool, inflight: _InFlight) -> None:
    """Release each prompt at its absolute due time, through the gate."""
    loop = asyncio.get_running_loop()
    build_body = client.build_body

    async def one(rec: RequestRecord, body: bytes) -> None:
        try:
            await send(client, rec, body)
        finally:
            inflight.now -= 1
            if gate is not None:
                gate.release()
            finished(rec)

    for i, prompt in enumerate(prompts):
        due = start_ns + (int(offsets_s[i] * 1e9) if offsets_s is not None else 0)
        body = build_body(prompt)  # while waiting, not after
        await sleep_until(due)
        if gate is not None:
            await gate.acquire()
        rec = RequestRecord(prompt_id=prompt.id, input_len=prompt.input_len, output_len=prompt.output_len,
                            intended_ns=due, released_ns=perf_counter_ns(), warmup=warmup)
        inflight.now += 1
        if inflight.now > inflight.peak:
            inflight.peak = inflight.now
        task = loop.create_task(one(rec, body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _drain(tasks: set[asyncio.Task], stop: _Stop, grace_s: float) -> None:
    """Wait for in-flight requests; after an interrupt, only ``grace_s`` more."""
    pending = [t for t in tasks if not t.done()]
    if not pending:
        return
    if not stop.interrupted:
        everything = asyncio.gather(*pending, return_exceptions=True)
        interrupted = asyncio.ensure_future(stop.event.wait())
        either: set[asyncio.Future] = {everything, interrupted}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        interrupted.cancel()
        if everything.done():
            return
        pending = [t for t in pending if not t.done()]
    if not stop.force and grace_s > 0:
        deadline = stop.loop.time() + grace_s
        while pending and not stop.force:
            left = deadline - stop.loop.time()
            if left <= 0:
                break
            forced = asyncio.ensure_future(stop.event.wait())
            stop.event.clear()
            await asyncio.wait([*pending, forced], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
            pending = [t for t in pending if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


async def _finish_releasing(stop: _Stop, tasks: set[asyncio.Task], grace_s: float) -> None:
    """Wait for ``stop.dispatcher`` to release its prompts, then drain ``tasks``."""
    try:
        await stop.dispatcher  # type: ignore[misc]
    except asyncio.CancelledError:
        # Cancelled by Ctrl-C or by the duration limit; anything else propagates.
        if not stop.requested:
            raise
    await _drain(tasks, stop, grace_s)




def _install_signals(loop: asyncio.AbstractEventLoop, stop: _Stop) -> dict[int, object]:
    """Route SIGINT and SIGTERM to ``stop`` for the run; return the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, object] = {}
    for sig in SIGNALS:
        try:
            prev = signal.getsignal(sig)
            loop.add_signal_handler(sig, stop.interrupt, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        previous[sig] = prev
    return previous


def _restore_signals(loop: asyncio.AbstractEventLoop, previous: dict[int, object]) -> None:
    """Give the signals back to whoever had them (asyncio would reset them to the default)."""
    for sig in previous:
        loop.remove_signal_handler(sig)
    interrupts.restore(previous)


async def run_async(
    target: Target,
    prompts: Sequence[Prompt],
    offsets_s: Sequence[float] | None,
    *,
    concurrency: int | None = None,
    warmup: int = 0,
    warm_prompts: Sequence[Prompt] | None = None,
    duration_s: float | None = None,
    counters: LiveCounters | None = None,
    on_tick: Callable[[LiveCounters], None] | None = None,
    tick_s: float = 0.25,
    grace_s: float = 5.0,
    lag_interval_s: float = 0.010,
    handle_signals: bool = True,
    sink: Sink | None = None,
    flush_s: float = 0.5,
    freeze_gc: bool = True,
    preconnect: bool = True,
    kernel_stamps: bool = True,
    fast_path: bool = True,
    clock_start: Callable[[], Awaitable[int]] | None = None,
    stop_hook: Callable[[Callable[[int], None]], None] | None = None,
    session_header: str | None = None,
    max_model_len: int | None = None,
) -> RunOutcome:
    """The body of :func:`run`, for callers that already run an event loop.

    ``clock_start`` (worker processes, :mod:`loadgen.scale`) is awaited once the
    first wave's connections are open and returns the ``perf_counter_ns`` instant the
    measured phase starts at, shared by every worker. ``stop_hook`` receives a
    thread-safe function that stops the run as a signal would (a Ray actor's stop).

    ``freeze_gc`` pauses the garbage collector during the measured phase and
    ``preconnect`` opens the first wave's connections before the clock starts;
    ``kernel_stamps`` and ``fast_path`` go to :class:`StreamClient`. All are on in the
    product (``perf/client.py`` turns each off to show what it buys).

    ``warm_prompts``: the ``warmup`` requests' own prompts. Without them the warm-up re-sends the
    first measured prompts, and a server with a prefix cache then serves those from it.
    Prompts that carry sessions are released as sessions (:mod:`loadgen.sessions`):
    ``session_header`` names the header carrying a session's id, and a turn that would
    not fit ``max_model_len`` ends its session instead of being sent.
    """
    _validate(prompts, offsets_s, concurrency, warmup, duration_s, tick_s, grace_s)
    loop = asyncio.get_running_loop()
    counters = counters if counters is not None else LiveCounters()
    client = StreamClient(target, counters=None, kernel_stamps=kernel_stamps, fast_path=fast_path)
    if prompts:
        try:
            client.build_body(prompts[0])  # a body the protocol cannot build fails now, not mid-run
        except ValueError as exc:
            raise ClientError(str(exc)) from None
    offsets = list(offsets_s) if offsets_s is not None else None
    stop = _Stop(loop)
    previous = _install_signals(loop, stop) if handle_signals else {}
    if stop_hook is not None:
        def interrupt_soon(signum: int) -> None:  # called from another thread
            loop.call_soon_threadsafe(stop.interrupt, signum)

        stop_hook(interrupt_soon)
    gate = asyncio.Semaphore(concurrency) if concurrency else None
    dispatch: Callable[..., Coroutine[Any, Any, None]] = _dispatch
    if prompts and prompts[0].session is not None:
        from functools import partial

        from loadgen.sessions import (  # late: only session runs need it (cold start)
            SessionPlan,
            dispatch_sessions,
        )

        stop.sessions = plan = SessionPlan(prompts, header=session_header, max_model_len=max_model_len)
        dispatch = partial(dispatch_sessions, plan)
    warm_records: list[RequestRecord] = []
    records: list[RequestRecord] = []
    tasks: set[asyncio.Task] = set()
    inflight = _InFlight()
    lag = LagMonitor(lag_interval_s)
    handles: list[asyncio.TimerHandle | None] = [None, None, None]  # tick, flush, duration
    gc_was_enabled = gc.isenabled()
    start_ns = end_ns = perf_counter_ns()

    def every(slot: int, interval: float, fn: Callable[[], None]) -> None:
        def fire() -> None:
            try:
                fn()
            except Exception:  # a broken display must not stop a benchmark
                handles[slot] = None
                return
            handles[slot] = loop.call_later(interval, fire)

        handles[slot] = loop.call_later(interval, fire)

    try:
        if stop.sessions is not None:
            await stop.sessions.start()  # type: ignore[attr-defined]
        if warmup:
            source = warm_prompts or prompts
            warm = [source[i % len(source)] for i in range(warmup)]
            warm_tasks: set[asyncio.Task] = set()
            stop.dispatcher = loop.create_task(
                _dispatch(client, warm, None, gate, perf_counter_ns(),
                          sink.push if sink is not None else warm_records.append, warm_tasks, True, _InFlight()))
            await _finish_releasing(stop, warm_tasks, grace_s)
        if not stop.interrupted and prompts:
            # Connections for the first wave, opened off the clock: every request
            # released at t=0 would otherwise start with a handshake in a burst.
            zero = sum(1 for off in offsets if off == 0.0) if offsets is not None else len(prompts)
            first_wave = min(concurrency, zero) if concurrency else zero
            if first_wave > 1 and preconnect:
                await client.preconnect(min(first_wave, MAX_PRECONNECT))
        if not stop.interrupted:
            client.counters = counters
            if freeze_gc:
                gc.collect()
                gc.freeze()
                gc.disable()
            start_ns = perf_counter_ns() if clock_start is None else await clock_start()
        if not stop.interrupted:
            if sink is not None:
                sink.begin(start_ns)

                def flush() -> None:
                    # a slice per call; while more is pending, again on the next iteration
                    handles[1] = loop.call_later(0 if sink.flush() else flush_s, flush)

                handles[1] = loop.call_later(flush_s, flush)
            lag.start(loop)
            if on_tick is not None:
                every(0, tick_s, lambda: on_tick(counters))
            stop.dispatcher = loop.create_task(
                dispatch(client, prompts, offsets, gate, start_ns,
                          sink.push if sink is not None else records.append, tasks, False, inflight))
            if duration_s is not None:
                handles[2] = loop.call_later(duration_s, stop.stop_releasing)
            await _finish_releasing(stop, tasks, grace_s)
            end_ns = perf_counter_ns()
    finally:
        for handle in handles:
            if handle is not None:
                handle.cancel()
        lag.stop()
        if gc_was_enabled:
            gc.enable()
        gc.unfreeze()
        _restore_signals(loop, previous)
        await client.close()
        if stop.sessions is not None:
            await stop.sessions.close()  # type: ignore[attr-defined]
    if on_tick is not None:
        try:
            on_tick(counters)  # the final state, so the display ends on the true totals
        except Exception:
            pass
    return RunOutcome(records=records, start_ns=start_ns, end_ns=end_ns, lag_samples_ns=lag.samples_ns,
                      partial=stop.interrupted, warmup_records=warm_records, signal=stop.signal,
                      max_in_flight=inflight.peak)


def run(
    target: Target,
    prompts: Sequence[Prompt],
    offsets_s: Sequence[float] | None,
    **options: object,
) -> RunOutcome:
    """Run one load point on a fresh uvloop event loop (options as :func:`run_async`).

    SIGINT or SIGTERM stops releasing, gives in-flight requests ``grace_s`` to finish,
    cancels the rest (their records kept, error ``cancelled``) and returns
    ``partial=True`` with the signal; a second signal skips what is left of the grace
    period.
    """
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_async(target, prompts, offsets_s, **options))  # type: ignore[arg-type]
