"""One load point over several client processes: the plan, the worker, the merge.

One uvloop process stamps chunks exactly up to ~75k chunks/s; beyond that the load is
split over worker processes on this machine (:mod:`loadgen.scale.procpool`) or Ray actors
across machines (:mod:`loadgen.scale.ray_pool`). Both run :func:`run_worker`; this module
holds everything they share:

* the plan (pure): the global timeline is computed once and request ``i`` goes to
  worker ``i mod N`` (:func:`partition`), so every worker's releases interleave with
  the others' and the union is exactly the single-process schedule; the concurrency
  limit is split with the remainder to the first workers (:func:`split_limit`);
* the worker: its own runner, :class:`~loadgen.collect.PointCollector` and per-worker
  request store, started on a common instant (``clock_start``) handed out by the
  parent once every worker has warmed up and opened its first wave's connections;
* the merge: aggregates of disjoint request sets add exactly
  (:meth:`Aggregate.merge`), the per-worker stores are concatenated into the point's
  store, and the result JSON is the single-process schema plus ``workers``.

Why bursts are not late with per-worker limits: with ``--concurrency C`` and ``rate
inf`` the first ``C`` requests go at t=0; round-robin gives worker ``k`` exactly its
share of them and its limit is that share, each worker preconnects its share before
the common start, so all ``C`` leave at the start instant as in one process. A split
limit differs from one global semaphore only later in a run, when one worker's
requests finish sooner than another's: its freed slots are not lent to the other
(no work stealing), which is the price of keeping every decision inside one process
(no IPC on the hot path). The per-worker peaks are summed into
``max_concurrency_observed``.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from loadgen import hdr_record
from loadgen.aggregate import Aggregate
from loadgen.collect import PointCollector
from loadgen.records import Prompt
from loadgen.runner import LiveCounters, run
from loadgen.store import RequestStore, StoreFiles

if TYPE_CHECKING:
    pass

# The parent hands out the start instant this far ahead of "everyone is ready", so the
# message reaches every worker before it (a pipe write plus a wake-up, even when busy).
START_MARGIN_S = 0.05
# The runner's progress timer in a worker: it publishes the live counters, and its calls
# are the event loop's heartbeat (loadgen.scale.procpool), so it costs nothing per request.
TICK_S = 0.25


# ---------------------------------------------------------------- what travels


@dataclass
class WorkerTask:
    """Everything one worker needs; picklable (a forked child or a Ray actor gets it)."""

    index: int
    target: Any  # loadgen.runner.Target
    prompts: Sequence[Prompt]  # a list, or a trace replay's lazy TracePrompts
    offsets_s: list[float]
    concurrency: int | None
    warmup: int
    duration_s: float | None
    grace_s: float
    store: StoreFiles
    save_text: bool = False
    goodput_slos_ms: dict[str, float] = field(default_factory=dict)
    inline_limit: int = 0
    warmup_s: float = 0.0  # --warmup-seconds: requests sent before start + warmup_s count as warm-up
    warm_prompts: list[Prompt] | None = None  # the warm-up's own prompts (else it re-sends the first ones)
    in_thread: bool = False  # a Ray actor runs it in a thread of a shared process: count that thread's CPU
    session_header: str | None = None  # sessions: each stays on one worker (a prompt carries its session)
    max_model_len: int | None = None


@dataclass
class WorkerResult:
    """What a worker hands back; the aggregate travels encoded (:func:`aggregate_to_wire`)."""

    index: int
    aggregate: bytes
    start_ns: int
    end_ns: int
    lag_samples_ns: np.ndarray
    max_in_flight: int
    partial: bool
    signal: int | None
    warmup_requests: int
    store: dict[str, Any]
    start_late_ms: float = 0.0
    cpu_s: float = 0.0  # the worker's CPU time (user + system) for the whole task
    start_epoch_s: float = 0.0  # the common start on this worker's wall clock
    host: str = ""
    pid: int = 0
    store_blobs: dict[str, bytes] | None = None  # Ray: the store files' bytes (written on another node)


@dataclass
class WorkerOutcome:
    """One worker as the parent saw it: its result, or why there is none."""

    index: int
    result: WorkerResult | None = None
    error: str | None = None  # "was killed by SIGKILL", "failed (ActorDiedError: ...)"
    store: StoreFiles | None = None
    clock_offset_ms: float | None = None  # Ray: the actor's wall clock minus the driver's


def aggregate_to_wire(agg: Aggregate) -> bytes:
    """Pickle an aggregate; its HDR histograms (ctypes arrays) travel in their standard encoding."""
    hists = {m: a.hist for m, a in agg.metrics.items()}
    try:
        for a in agg.metrics.values():
            a.hist = hdr_record.encode(a.hist) if a.moments.n else None
        return pickle.dumps(agg, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for m, a in agg.metrics.items():
            a.hist = hists[m]


def aggregate_from_wire(payload: bytes) -> Aggregate:
    agg: Aggregate = pickle.loads(payload)
    for a in agg.metrics.values():
        a.hist = hdr_record.decode(a.hist) if a.hist is not None else hdr_record.new_histogram()
    return agg


# ---------------------------------------------------------------- the worker


class Control(Protocol):
    """How a worker meets its parent: the common start, and progress off the hot path."""

    async def start(self) -> int:
        """Say "ready", wait for the common start instant; return it (``perf_counter_ns``)."""

    def publish(self, counters: Any) -> None:
        """Live counters, called on the runner's progress timer."""

    def on_stop(self, stop: Callable[[int], None]) -> None:
        """Receive the function that stops the run (a signal by another route)."""

    def loop_done(self) -> None:
        """The event loop's part is over (what follows is the store's close and the result's encoding)."""


async def wait_until(t_ns: int) -> None:
    """Sleep to ``t_ns`` and yield out the last millisecond (uvloop timers are 1 ms)."""
    wait = t_ns - perf_counter_ns()
    while wait > 0:
        await asyncio.sleep(wait / 1e9 if wait > 1_000_000 else 0)
        wait = t_ns - perf_counter_ns()


def run_worker(task: WorkerTask, control: Control) -> WorkerResult:
    """One worker's share of a point: the runner, its collector and its own store."""

    collector = PointCollector(
        Aggregate(goodput_slos_ms=task.goodput_slos_ms or None, inline_limit=task.inline_limit),
        RequestStore(task.store, save_text=task.save_text),
        warmup_s=task.warmup_s,
    )
    counters = LiveCounters()
    late = [0.0, 0.0]  # ms late, epoch s of the start
    cpu0 = time.thread_time() if task.in_thread else time.process_time()

    async def clock_start() -> int:
        start = await control.start()
        await wait_until(start)
        now = perf_counter_ns()
        late[0], late[1] = (now - start) / 1e6, time.time() - (now - start) / 1e9
        return start

    try:
        outcome = run(
            task.target, task.prompts, task.offsets_s,
            concurrency=task.concurrency, warmup=task.warmup, warm_prompts=task.warm_prompts,
            duration_s=task.duration_s,
            counters=counters, on_tick=control.publish, tick_s=TICK_S, grace_s=task.grace_s, sink=collector,
            clock_start=clock_start, stop_hook=control.on_stop,
            session_header=task.session_header, max_model_len=task.max_model_len,
        )
    finally:
        control.loop_done()
        collector.close(perf_counter_ns())
    control.publish(counters)
    return WorkerResult(
        index=task.index,
        aggregate=aggregate_to_wire(collector.aggregate),
        start_ns=outcome.start_ns,
        end_ns=max(outcome.end_ns, outcome.start_ns),
        lag_samples_ns=np.asarray(outcome.lag_samples_ns, dtype=np.int64),
        max_in_flight=outcome.max_in_flight,
        partial=outcome.partial,
        signal=outcome.signal,
        warmup_requests=collector.warmup_requests,
        store=collector.store.describe() if collector.store is not None else {},
        start_late_ms=late[0],
        start_epoch_s=late[1],
        cpu_s=(time.thread_time() if task.in_thread else time.process_time()) - cpu0,
        host=socket.gethostname(),
        pid=os.getpid(),
    )


# ---------------------------------------------------------------- the plan → tasks


def worker_store_files(files: StoreFiles, index: int) -> StoreFiles:
    """``NAME.requests.npy`` → ``NAME.w<index>.requests.npy`` (and the same for the others)."""

    # The result stem may itself contain dots ("...-r0.5-..."): tag before the known suffix.
    def tag_suffix(p: Path | None, suffix: str) -> Path | None:
        if p is None:
            return None
        return p.with_name(p.name[: -len(suffix)] + f".w{index}" + suffix)

    return StoreFiles(
        requests=tag_suffix(files.requests, ".requests.npy"),  # type: ignore[arg-type]
        chunks=tag_suffix(files.chunks, ".chunks.npy"),
        details=tag_suffix(files.details, ".details.jsonl"),  # type: ignore[arg-type]
    )


def tick_if_due(next_tick: float, tick_s: float, on_tick: Any) -> float:
    """Call the display's tick when it is due; the next due time (``time.monotonic``).

    A broken display must not stop a benchmark, so its errors are dropped."""
    if time.monotonic() < next_tick:
        return next_tick
    try:
        on_tick()
    except Exception:  # noqa: BLE001
        pass
    return time.monotonic() + tick_s


class SummedCounters:
    """Per-worker live counters (one row each) read as one :class:`LiveCounters` by the display."""

    FIELDS = ("started", "completed", "failed", "in_flight", "output_tokens")

    def __init__(self, workers: int, rows: Any = None) -> None:
        self.workers = workers
        self.rows = rows if rows is not None else [0] * (workers * len(self.FIELDS))

    def set(self, index: int, counters: Any) -> None:
        base = index * len(self.FIELDS)
        for j, name in enumerate(self.FIELDS):
            self.rows[base + j] = int(getattr(counters, name))

    def __getattr__(self, name: str) -> int:
        if name not in SummedCounters.FIELDS:
            raise AttributeError(name)
        j, width = SummedCounters.FIELDS.index(name), len(SummedCounters.FIELDS)
        return sum(self.rows[k * width + j] for k in range(self.workers))
