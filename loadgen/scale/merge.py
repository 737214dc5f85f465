"""The workers' shares of a point made into one: aggregates, loop lag, per-request stores.

Aggregates of disjoint request sets add exactly (:meth:`Aggregate.merge`), the
per-worker stores are concatenated into the point's store, and the result JSON is the
single-process schema plus ``workers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from loadgen.aggregate import Aggregate
from loadgen.scale.worker import WorkerOutcome, aggregate_from_wire
from loadgen.store import (
    CHUNK_DTYPE,
    REQUEST_DTYPE,
    NpyAppender,
    StoreFiles,
    read_requests,
    records_from_rows,
)

if TYPE_CHECKING:
    pass


# ---------------------------------------------------------------- the merge


@dataclass
class Merged:
    """The workers' results added up: what :func:`loadgen.point.finish_point` needs."""

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


def rebuild_from_stores(outcomes: Sequence[WorkerOutcome], *, goodput_slos_ms: dict[str, float] | None,
                        inline_limit: int) -> Merged | None:
    """Every worker died: the figures rebuilt from the rows each had stored, or None when none stored any.

    The rows are the requests that ended before the worker died (stores are appended
    every half second). Loop lag is not in a store, so it is left out; inter-token
    latencies only come back from a chunk store (``--save-requests``).
    """
    total = Aggregate(goodput_slos_ms=goodput_slos_ms or None, inline_limit=inline_limit)
    span = warm = 0
    intervals: list[np.ndarray] = []
    workers: list[dict[str, Any]] = []
    for o in sorted(outcomes, key=lambda o: o.index):
        rows = _stored_rows(o.store)
        chunks = read_requests(o.store.chunks) if rows is not None and o.store is not None and o.store.chunks is not None \
            and o.store.chunks.exists() else None
        row: dict[str, Any] = {"worker": o.index, "error": o.error, "completed": None, "rebuilt_rows": 0,
                               "store": o.store.requests.name if o.store is not None else None}
        workers.append(row)
        if rows is None or not len(rows):
            continue
        records = records_from_rows(rows, chunks)
        measured = [r for r in records if not r.warmup]
        warm += len(records) - len(measured)
        agg = Aggregate(goodput_slos_ms=goodput_slos_ms or None, inline_limit=inline_limit)
        agg.add(measured)
        total.merge(agg)
        row.update(rebuilt_rows=len(rows), num_requests=agg.num_requests, completed=agg.completed, failed=agg.failed,
                   total_output_tokens=agg.total_output_tokens)
        sent = np.asarray(rows["sent_ms"], np.float64)
        ended = np.asarray(rows["last_ms"], np.float64)
        done = np.isfinite(sent) & ~np.asarray(rows["warmup"], bool)
        ended = np.where(np.isfinite(ended), ended, sent)
        if done.any():
            span = max(span, int(np.nanmax(ended[done]) * 1e6))
            intervals.append(np.stack([sent[done], ended[done]]))
    if not total.num_requests:
        return None
    return Merged(total, span, np.zeros(0, np.int64), peak_overlap(np.concatenate(intervals, axis=1)), True, None,
                  warm, workers)


def _stored_rows(files: StoreFiles | None) -> np.ndarray | None:
    if files is None or not files.requests.exists():
        return None
    try:
        return np.asarray(read_requests(files.requests))
    except (OSError, ValueError):
        return None


def peak_overlap(intervals: np.ndarray) -> int:
    """The most requests in flight at once, from (start, end) columns (a request's own end before another's start)."""
    if not intervals.size:
        return 0
    times = np.concatenate([intervals[0], intervals[1]])
    steps = np.concatenate([np.ones(intervals.shape[1], np.int64), -np.ones(intervals.shape[1], np.int64)])
    order = np.lexsort((steps, times))  # at equal times, ends (-1) first
    return int(np.cumsum(steps[order]).max())


# ---------------------------------------------------------------- the stores


def concat_stores(parts: Sequence[StoreFiles], dest: StoreFiles) -> dict[str, Any]:
    """Append every worker's store files to the point's, then remove the workers' files.

    Rows keep their worker's times, which are relative to the common start.
    """

    rows = 0
    error: str | None = None
    details = False
    try:
        req = NpyAppender(dest.requests, REQUEST_DTYPE)
        chk = NpyAppender(dest.chunks, CHUNK_DTYPE) if dest.chunks is not None else None
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
