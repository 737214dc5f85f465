"""One load point over several client processes: the plan, the worker, the merge.

One uvloop process stamps chunks exactly up to ~75k chunks/s; beyond that the load is
split over worker processes on this machine (:mod:`loadgen.procpool`) or Ray actors
across machines (:mod:`loadgen.ray_workers`). Both run :func:`run_worker`; this module
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

from loadgen import hdr
from loadgen.aggregate import Aggregate
from loadgen.records import Prompt
from loadgen.store import StoreFiles
from loadgen.workload.trace_prompts import TracePrompts

if TYPE_CHECKING:
    from loadgen.config import RunConfig

# The parent hands out the start instant this far ahead of "everyone is ready", so the
# message reaches every worker before it (a pipe write plus a wake-up, even when busy).
START_MARGIN_S = 0.05


# ---------------------------------------------------------------- the plan (pure)


def partition(n: int, workers: int) -> list[np.ndarray]:
    """Indices of the requests each worker sends: round-robin, ``i -> i mod workers``.

    Every worker's share spans the whole timeline, so the workers' release streams
    interleave and their union is the single-process schedule, request for request.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return [np.arange(k, n, workers, dtype=np.int64) for k in range(workers)]


def split_limit(limit: int | None, workers: int) -> list[int | None]:
    """A global concurrency limit as per-worker limits that add up to it exactly.

    ``limit // workers`` each and one more for the first ``limit % workers`` — the
    same workers that round-robin gives one more request of a burst.
    """
    if limit is None:
        return [None] * workers
    if limit < workers:
        raise ValueError(f"a concurrency limit of {limit} cannot be split over {workers} workers")
    q, r = divmod(limit, workers)
    return [q + (1 if k < r else 0) for k in range(workers)]


def effective_workers(workers: int, concurrency: int | None, n_prompts: int) -> int:
    """Workers actually used for a point: never more than its limit or its requests."""
    return max(1, min(workers, concurrency if concurrency is not None else workers, n_prompts))


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
            a.hist = hdr.encode(a.hist) if a.moments.n else None
        return pickle.dumps(agg, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for m, a in agg.metrics.items():
            a.hist = hists[m]


def aggregate_from_wire(payload: bytes) -> Aggregate:
    agg: Aggregate = pickle.loads(payload)
    for a in agg.metrics.values():
        a.hist = hdr.decode(a.hist) if a.hist is not None else hdr.new_histogram()
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


async def wait_until(t_ns: int) -> None:
    """Sleep to ``t_ns`` and yield out the last millisecond (uvloop timers are 1 ms)."""
    wait = t_ns - perf_counter_ns()
    while wait > 0:
        await asyncio.sleep(wait / 1e9 if wait > 1_000_000 else 0)
        wait = t_ns - perf_counter_ns()


def run_worker(task: WorkerTask, control: Control) -> WorkerResult:
    """One worker's share of a point: the runner, its collector and its own store."""
    from loadgen.collect import PointCollector
    from loadgen.runner import LiveCounters, run
    from loadgen.store import RequestStore

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
            counters=counters, on_tick=control.publish, grace_s=task.grace_s, sink=collector,
            clock_start=clock_start, stop_hook=control.on_stop,
            session_header=task.session_header, max_model_len=task.max_model_len,
        )
    finally:
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


def plan_tasks(
    cfg: RunConfig,
    target: Any,
    prompts: Sequence[Prompt],
    offsets_s: np.ndarray,
    concurrency: int | None,
    store: StoreFiles,
    workers: int,
    warm_prompts: Sequence[Prompt] | None = None,
) -> list[WorkerTask]:
    """The global schedule cut into one task per worker (prompts are shared, not copied)."""
    n = effective_workers(workers, concurrency, len(prompts))
    shares = partition(len(prompts), n)
    limits = split_limit(concurrency, n)
    warm_shares = partition(cfg.schedule.warmup, n)
    warm = [len(s) for s in warm_shares]
    return [
        WorkerTask(
            index=k,
            target=target,
            # a trace replay's prompts stay lazy: each worker builds its own just before release
            prompts=prompts.subset(idx) if isinstance(prompts, TracePrompts) else [prompts[i] for i in idx],
            offsets_s=offsets_s[idx].tolist(),
            concurrency=limits[k],
            warmup=warm[k],
            duration_s=cfg.schedule.duration_s,
            grace_s=cfg.schedule.grace_s,
            store=worker_store_files(store, k),
            save_text=cfg.output.save_text,
            goodput_slos_ms=dict(cfg.output.goodput_slos_ms),
            inline_limit=cfg.output.inline_requests,
            warmup_s=cfg.schedule.warmup_s,
            warm_prompts=[warm_prompts[i % len(warm_prompts)] for i in warm_shares[k]] if warm_prompts else None,
            session_header=cfg.workload.session_header,
        )
        for k, idx in enumerate(shares)
    ]


# ---------------------------------------------------------------- the merge


@dataclass
class Merged:
    """The workers' results added up: what :func:`loadgen.sweep.finish_point` needs."""

    aggregate: Aggregate
    span_ns: int
    lag_samples_ns: np.ndarray  # the worst worker's (highest p99): client_saturated if any worker is
    max_in_flight: int
    partial: bool
    signal: int | None
    warmup_requests: int
    workers: list[dict[str, Any]]
    start_epoch_s: float | None = None  # the earliest worker's (None: no worker started)


def lag_figures(samples_ns: np.ndarray) -> tuple[float, float, float]:
    """(p50, p99, max) in ms, computed as :meth:`Aggregate.summary` does."""
    if not samples_ns.size:
        return 0.0, 0.0, 0.0
    lag = samples_ns.astype(np.float64) / 1e6
    p50, p99 = np.percentile(lag, [50, 99])
    return float(p50), float(p99), float(lag.max())


def merge_outcomes(outcomes: Sequence[WorkerOutcome], *, goodput_slos_ms: dict[str, float] | None,
                   inline_limit: int, saturation_lag_p99_ms: float) -> Merged:
    """Add up every worker that returned; a worker without a result makes the point partial."""
    total = Aggregate(goodput_slos_ms=goodput_slos_ms or None, inline_limit=inline_limit)
    span = 0
    worst = np.zeros(0, dtype=np.int64)
    worst_p99 = -1.0
    in_flight = warm = 0
    partial = False
    sig: int | None = None
    rows: list[dict[str, Any]] = []
    starts: list[float] = []
    for o in sorted(outcomes, key=lambda o: o.index):
        r = o.result
        if r is None:
            partial = True
            rows.append({"worker": o.index, "error": o.error, "completed": None,
                         "store": o.store.requests.name if o.store is not None else None})
            continue
        agg = aggregate_from_wire(r.aggregate)
        total.merge(agg)
        span = max(span, r.end_ns - r.start_ns)
        p50, p99, mx = lag_figures(r.lag_samples_ns)
        if p99 > worst_p99:
            worst_p99, worst = p99, r.lag_samples_ns
        in_flight += r.max_in_flight
        if r.start_epoch_s:
            starts.append(r.start_epoch_s)
        warm += r.warmup_requests
        partial = partial or r.partial
        sig = sig or r.signal
        rows.append({
            "worker": o.index, "host": r.host, "pid": r.pid, "error": None, "partial": r.partial,
            "num_requests": agg.num_requests, "completed": agg.completed, "failed": agg.failed,
            "total_output_tokens": agg.total_output_tokens,
            "duration": (r.end_ns - r.start_ns) / 1e9, "start_late_ms": r.start_late_ms, "cpu_s": r.cpu_s,
            "loop_lag_p50_ms": p50, "loop_lag_p99_ms": p99, "loop_lag_max_ms": mx,
            "client_saturated": p99 > saturation_lag_p99_ms, "max_concurrency_observed": r.max_in_flight,
            "store_rows": r.store.get("rows"),
            **({"clock_offset_ms": o.clock_offset_ms} if o.clock_offset_ms is not None else {}),
        })
    return Merged(total, span, worst, in_flight, partial, sig, warm, rows, min(starts) if starts else None)


# ---------------------------------------------------------------- the stores


def concat_stores(parts: Sequence[StoreFiles], dest: StoreFiles) -> dict[str, Any]:
    """Append every worker's store files to the point's, then remove the workers' files.

    Rows keep their worker's times, which are relative to the common start.
    """
    from loadgen.store import CHUNK_DTYPE, REQUEST_DTYPE, _NpyAppender, read_requests

    rows = 0
    error: str | None = None
    details = False
    try:
        req = _NpyAppender(dest.requests, REQUEST_DTYPE)
        chk = _NpyAppender(dest.chunks, CHUNK_DTYPE) if dest.chunks is not None else None
        try:
            for p in parts:
                if p.requests.exists():
                    arr = read_requests(p.requests)
                    for i in range(0, len(arr), 100_000):
                        req.append(np.asarray(arr[i:i + 100_000]))
                    rows += len(arr)
                if chk is not None and p.chunks is not None and p.chunks.exists():
                    arr = read_requests(p.chunks)
                    for i in range(0, len(arr), 1_000_000):
                        chk.append(np.asarray(arr[i:i + 1_000_000]))
            with_details = [p.details for p in parts if p.details.exists()]
            if with_details:
                details = True
                with open(dest.details, "wb") as out:
                    for d in with_details:
                        out.write(d.read_bytes())
        finally:
            req.close()
            if chk is not None:
                chk.close()
    except OSError as exc:
        error = f"{exc.strerror or exc} ({getattr(exc, 'filename', None) or dest.requests})"
    if error is None:
        for p in parts:
            for f in (p.requests, p.chunks, p.details):
                if f is not None:
                    f.unlink(missing_ok=True)
    return {
        "requests": dest.requests.name,
        "chunks": dest.chunks.name if dest.chunks is not None else None,
        "details": dest.details.name if details else None,
        "rows": rows,
        "complete": error is None,
        "error": error,
    }


def write_blobs(blobs: dict[str, bytes], files: StoreFiles) -> None:
    """A remote worker's store files, written where a local worker would have written them."""
    for key, path in (("requests", files.requests), ("chunks", files.chunks), ("details", files.details)):
        data = blobs.get(key)
        if data is not None and path is not None:
            path.write_bytes(data)


def read_blobs(files: StoreFiles) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, path in (("requests", files.requests), ("chunks", files.chunks), ("details", files.details)):
        if path is not None and path.exists():
            out[key] = path.read_bytes()
    return out


# ---------------------------------------------------------------- one point, end to end


def run_point_workers(
    cfg: RunConfig,
    pre: Any,
    prompts: Sequence[Prompt],
    concurrency: int | None,
    rate: float,
    date: str,
    *,
    console: Any,
    progress_console: Any = None,
    repeat: int = 1,
) -> dict[str, Any]:
    """:func:`loadgen.sweep.run_point` over worker processes or Ray actors."""
    from loadgen import interrupts
    from loadgen import results as results_mod
    from loadgen.collect import PointCollector
    from loadgen.metrics import SATURATION_LAG_P99_MS
    from loadgen.progress import Progress, print_summary
    from loadgen.sweep import finish_point, point_setup, point_telemetry

    setup = point_setup(cfg, pre, len(prompts), concurrency, rate, date, repeat)
    files, offsets, target = setup.files, setup.offsets, setup.target
    if cfg.schedule.ray_address:
        from loadgen import ray_workers as transport
        from loadgen.sweep import PreflightError

        try:
            workers = cfg.schedule.workers or transport.default_workers(cfg.schedule.ray_address)
            tasks = plan_tasks(cfg, target, prompts, offsets, concurrency, files.store, workers, pre.warm_prompts)
            transport.check_capacity(cfg.schedule.ray_address, len(tasks))
        except RuntimeError as exc:
            raise PreflightError(str(exc)) from None
    else:
        from loadgen import procpool as transport  # type: ignore[no-redef]

        tasks = plan_tasks(cfg, target, prompts, offsets, concurrency, files.store, cfg.schedule.workers,
                           pre.warm_prompts)
    for task in tasks:
        task.max_model_len = pre.max_model_len  # a session turn that would not fit ends its session
    counters = SummedCounters(len(tasks))
    title = f"{setup.title} ({len(tasks)} {'actors' if cfg.schedule.ray_address else 'workers'})"
    telemetry = point_telemetry(cfg, files, counters, console)
    # The live display and the telemetry scraper (threads) start once the workers are
    # forked: a child must not inherit a lock one of them holds.
    prog = Progress(counters, len(prompts), title, console=progress_console, enabled=cfg.output.progress)
    threads: list[Any] = []

    def started() -> None:
        for ctx in (telemetry, prog):
            ctx.__enter__()
            threads.append(ctx)

    try:
        outcomes = transport.run_tasks(tasks, counters=counters, on_tick=prog.tick,
                                       address=cfg.schedule.ray_address, on_started=started)
        ended_ns = time.perf_counter_ns()  # the workers' clocks are this machine's (Ray: near enough)
    finally:
        for ctx in reversed(threads):
            ctx.__exit__(None, None, None)
    merged = merge_outcomes(outcomes, goodput_slos_ms=cfg.output.goodput_slos_ms, inline_limit=cfg.output.inline_requests,
                            saturation_lag_p99_ms=SATURATION_LAG_P99_MS)
    if merged.signal is not None:
        interrupts.note(merged.signal)
    for row, task in zip(merged.workers, sorted(tasks, key=lambda t: t.index), strict=True):
        row["concurrency"] = task.concurrency
    if all(o.result is None for o in outcomes):
        from loadgen.sweep import PreflightError

        raise PreflightError("every worker failed, so no result was written: " + "; ".join(
            f"worker {o.index} {o.error}" + _stored(o.store) for o in outcomes))
    live = [o.store for o in outcomes if o.result is not None and o.store is not None]
    per_request = concat_stores(live, files.store)
    failed = [o for o in outcomes if o.result is None]
    if failed:
        per_request["complete"] = False
        per_request["error"] = "; ".join(
            f"worker {o.index} {o.error}: its requests are not in the figures"
            + (f" (rows it stored: {o.store.requests.name})" if o.store is not None and o.store.requests.exists()
               else "") for o in failed)
    start_epoch = merged.start_epoch_s or time.time() - merged.span_ns / 1e9
    info = results_mod.PointInfo(
        concurrency=concurrency, rate=rate, date=date, model=pre.model, tokenizer_id=pre.tokenizer_id,
        start_epoch_s=start_epoch, end_epoch_s=start_epoch + merged.span_ns / 1e9, partial=merged.partial,
        repeat=repeat,
    )
    collector = PointCollector(merged.aggregate, None)
    collector.warmup_requests = merged.warmup_requests
    result = finish_point(
        cfg, info, collector, 0, merged.span_ns, merged.lag_samples_ns, files,
        server_version=pre.server_version, verification=pre.point_verification(), max_in_flight=merged.max_in_flight,
        server=pre.server, cache_reset=pre.cache_reset, cache_salt=pre.cache_salt,
        telemetry=telemetry.result_keys(ended_ns - merged.span_ns, ended_ns, start_epoch), trace=pre.trace,
        extra_fields={
            "per_request": per_request,
            "workers": len(tasks),
            "worker_mode": "ray" if cfg.schedule.ray_address else "processes",
            "workers_failed": [o.index for o in failed],
            "per_worker": merged.workers,
            "loop_lag_of": "the worker with the highest loop-lag p99 (per_worker has each one)",
        },
    )
    print_summary(result, console, str(files.result))
    if failed:
        console.print(f"[yellow]partial: {per_request['error']}[/yellow]", soft_wrap=True)
    return result


def _stored(files: StoreFiles | None) -> str:
    """Where a failed worker's stored rows are, if it stored any."""
    if files is None or not files.requests.exists():
        return ""
    from loadgen.store import store_layout

    try:
        rows = min(store_layout(files.requests)[1:])
    except (OSError, ValueError):
        return f" (its store: {files.requests})"
    return f" (its {rows} stored rows: {files.requests})" if rows else ""


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
