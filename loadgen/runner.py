"""Execute one load point: release prompts on schedule, gate concurrency, collect records.

    outcome = loadgen.runner.run(target, prompts, offsets_s, concurrency=..., warmup=..., ...)

``offsets_s`` are release times in seconds from the start (``loadgen.schedule``), or
``None``/all zeros for ``--rate inf``. Request ``i`` is released at the absolute time
``start + offsets_s[i]`` -- never after an accumulated sleep, so no drift builds up --
and that intended time is stored in its record (``intended_ns``). When the
concurrency gate is full a due request waits; the wait shows up as queue time
(``sent_ns - intended_ns``), which is how coordinated omission is made visible.

Everything that is not sending is prepared before the clock starts: request bodies
are serialised up front, the garbage collector is frozen and paused for the run (a
full collection over hundreds of thousands of stamps is a multi-millisecond stall in
the middle of someone's stream), and progress is read from counters on a timer.
"""

from __future__ import annotations

import asyncio
import gc
import math
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter_ns

from loadgen.client import ClientError, LiveCounters, StreamClient, Target
from loadgen.lag import LagMonitor
from loadgen.records import Prompt, RequestRecord

__all__ = ["LiveCounters", "RunOutcome", "Target", "run", "run_async"]

# Pause the garbage collector during the measured phase (bench/bench_client.py turns
# it off to measure what it buys).
FREEZE_GC = True
# Open the first wave's connections before the clock starts (at most this many).
PRECONNECT = True
MAX_PRECONNECT = 4096


@dataclass
class RunOutcome:
    """What one load point produced; figures are computed from it by loadgen.metrics."""

    records: list[RequestRecord]
    start_ns: int
    end_ns: int
    lag_samples_ns: list[int]
    partial: bool
    warmup_records: list[RequestRecord] = field(default_factory=list)


class _Stop:
    """Why and when releasing stopped; shared by the signal handler and the drain."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.interrupted = False
        self.requested = False  # releasing was stopped on purpose (duration or Ctrl-C)
        self.force = False
        self.event = asyncio.Event()
        self.dispatcher: asyncio.Task | None = None
        self.loop = loop

    def stop_releasing(self) -> None:
        self.requested = True
        if self.dispatcher is not None and not self.dispatcher.done():
            self.dispatcher.cancel()

    def interrupt(self) -> None:
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


async def _dispatch(client: StreamClient, prompts: Sequence[Prompt], bodies: Sequence[bytes],
                    offsets_s: Sequence[float] | None, gate: asyncio.Semaphore | None, start_ns: int,
                    records: list[RequestRecord], tasks: list[asyncio.Task], warmup: bool) -> None:
    """Release each prompt at its absolute due time, through the gate."""
    loop = asyncio.get_running_loop()

    async def one(rec: RequestRecord, body: bytes) -> None:
        try:
            await client.request(rec, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a client defect must not lose the rest of the run
            if rec.error is None:
                rec.error = "client_error"
                rec.error_detail = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            if gate is not None:
                gate.release()

    for i, prompt in enumerate(prompts):
        due = start_ns + (int(offsets_s[i] * 1e9) if offsets_s is not None else 0)
        wait = due - perf_counter_ns()
        while wait > 0:
            # uvloop's timers have 1 ms resolution and may fire a little early; the
            # last fraction of a millisecond is waited out by yielding to the loop.
            await asyncio.sleep(wait / 1e9 if wait > 1_000_000 else 0)
            wait = due - perf_counter_ns()
        if gate is not None:
            await gate.acquire()
        rec = RequestRecord(prompt_id=prompt.id, input_len=prompt.input_len, output_len=prompt.output_len,
                            intended_ns=due, warmup=warmup)
        records.append(rec)
        tasks.append(loop.create_task(one(rec, bodies[i])))


async def _drain(tasks: list[asyncio.Task], stop: _Stop, grace_s: float) -> None:
    """Wait for in-flight requests; after an interrupt, only ``grace_s`` more."""
    pending = [t for t in tasks if not t.done()]
    if not pending:
        return
    if not stop.interrupted:
        everything = asyncio.gather(*pending, return_exceptions=True)
        interrupted = asyncio.ensure_future(stop.event.wait())
        await asyncio.wait({everything, interrupted}, return_when=asyncio.FIRST_COMPLETED)
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


async def _finish_releasing(stop: _Stop, tasks: list[asyncio.Task], grace_s: float) -> None:
    """Wait for ``stop.dispatcher`` to release its prompts, then drain ``tasks``."""
    try:
        await stop.dispatcher  # type: ignore[misc]
    except asyncio.CancelledError:
        # Cancelled by Ctrl-C or by the duration limit; anything else propagates.
        if not stop.requested:
            raise
    await _drain(tasks, stop, grace_s)


def _install_sigint(loop: asyncio.AbstractEventLoop, stop: _Stop) -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        loop.add_signal_handler(signal.SIGINT, stop.interrupt)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


async def run_async(
    target: Target,
    prompts: Sequence[Prompt],
    offsets_s: Sequence[float] | None,
    *,
    concurrency: int | None = None,
    warmup: int = 0,
    duration_s: float | None = None,
    counters: LiveCounters | None = None,
    on_tick: Callable[[LiveCounters], None] | None = None,
    tick_s: float = 0.25,
    grace_s: float = 5.0,
    lag_interval_s: float = 0.010,
    handle_sigint: bool = True,
) -> RunOutcome:
    """The body of :func:`run`, for callers that already run an event loop."""
    _validate(prompts, offsets_s, concurrency, warmup, duration_s, tick_s, grace_s)
    loop = asyncio.get_running_loop()
    counters = counters if counters is not None else LiveCounters()
    client = StreamClient(target, counters=None)
    try:
        bodies = [client.build_body(p) for p in prompts]
    except ValueError as exc:
        raise ClientError(str(exc)) from None
    offsets = list(offsets_s) if offsets_s is not None else None
    stop = _Stop(loop)
    sigint = handle_sigint and _install_sigint(loop, stop)
    gate = asyncio.Semaphore(concurrency) if concurrency else None
    warm_records: list[RequestRecord] = []
    records: list[RequestRecord] = []
    tasks: list[asyncio.Task] = []
    lag = LagMonitor(lag_interval_s)
    tick_handle: asyncio.TimerHandle | None = None
    duration_handle: asyncio.TimerHandle | None = None
    gc_was_enabled = gc.isenabled()
    start_ns = end_ns = perf_counter_ns()
    try:
        if warmup:
            warm_prompts = [prompts[i % len(prompts)] for i in range(warmup)]
            warm_bodies = [bodies[i % len(prompts)] for i in range(warmup)]
            warm_tasks: list[asyncio.Task] = []
            stop.dispatcher = loop.create_task(
                _dispatch(client, warm_prompts, warm_bodies, None, gate, perf_counter_ns(),
                          warm_records, warm_tasks, True))
            await _finish_releasing(stop, warm_tasks, grace_s)
        if not stop.interrupted and prompts:
            # Connections for the first wave, opened off the clock: every request
            # released at t=0 would otherwise start with a handshake in a burst.
            zero = sum(1 for off in offsets if off == 0.0) if offsets is not None else len(prompts)
            first_wave = min(concurrency, zero) if concurrency else zero
            if first_wave > 1 and PRECONNECT:
                await client.preconnect(min(first_wave, MAX_PRECONNECT))
        if not stop.interrupted:
            client.counters = counters

            def tick() -> None:
                nonlocal tick_handle
                try:
                    on_tick(counters)  # type: ignore[misc]
                except Exception:  # a broken display must not stop a benchmark
                    tick_handle = None
                    return
                tick_handle = loop.call_later(tick_s, tick)

            if FREEZE_GC:
                gc.collect()
                gc.freeze()
                gc.disable()
            start_ns = perf_counter_ns()
            lag.start(loop)
            if on_tick is not None:
                tick_handle = loop.call_later(tick_s, tick)
            stop.dispatcher = loop.create_task(
                _dispatch(client, prompts, bodies, offsets, gate, start_ns, records, tasks, False))
            if duration_s is not None:
                duration_handle = loop.call_later(duration_s, stop.stop_releasing)
            await _finish_releasing(stop, tasks, grace_s)
            end_ns = perf_counter_ns()
    finally:
        if duration_handle is not None:
            duration_handle.cancel()
        if tick_handle is not None:
            tick_handle.cancel()
        lag.stop()
        if gc_was_enabled:
            gc.enable()
        gc.unfreeze()
        if sigint:
            loop.remove_signal_handler(signal.SIGINT)
        await client.close()
    if on_tick is not None:
        try:
            on_tick(counters)  # the final state, so the display ends on the true totals
        except Exception:
            pass
    return RunOutcome(records=records, start_ns=start_ns, end_ns=end_ns, lag_samples_ns=lag.samples_ns,
                      partial=stop.interrupted, warmup_records=warm_records)


def run(
    target: Target,
    prompts: Sequence[Prompt],
    offsets_s: Sequence[float] | None,
    *,
    concurrency: int | None = None,
    warmup: int = 0,
    duration_s: float | None = None,
    counters: LiveCounters | None = None,
    on_tick: Callable[[LiveCounters], None] | None = None,
    tick_s: float = 0.25,
    grace_s: float = 5.0,
) -> RunOutcome:
    """Run one load point on a fresh uvloop event loop and return every record.

    Ctrl-C stops releasing, gives in-flight requests ``grace_s`` to finish, cancels
    the rest (their records kept, error ``cancelled``) and returns ``partial=True``;
    a second Ctrl-C skips what is left of the grace period.
    """
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_async(
            target, prompts, offsets_s, concurrency=concurrency, warmup=warmup, duration_s=duration_s,
            counters=counters, on_tick=on_tick, tick_s=tick_s, grace_s=grace_s))
