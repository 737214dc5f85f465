"""Where finished requests go during a run: into the aggregates and the store, in batches.

The runner hands every finished request to :meth:`PointCollector.push` (one list
append on the hot path) and calls :meth:`PointCollector.flush` on a timer; a flush
reduces a slice of what finished (numpy, ~0.3 µs per chunk in bulk) and appends it
to the per-request store, after which the records are garbage. So memory stays flat
over any number of requests.

A slice holds at most :data:`SLICE_CHUNKS` chunks: 1,024 streams that finish
together would otherwise be one 60 ms reduction, a stall long enough for several
chunks of one stream to arrive in one read and share a stamp. It also holds at most
:data:`SLICE_RECORDS` requests: short responses cost per request (~4-5 µs, ~0.5 ms a
slice besides), so the 500 requests a 1,000 req/s schedule finishes between two
flushes would be one ~3 ms stall, and every release due during it late by as much.
While more is pending the runner calls again on the next loop iteration, so sockets
are read and requests released between slices. 32 requests a slice keep each stall well
under a millisecond: a 1,000 req/s trace replay's release lateness p99 was 1.6 ms with 32
and 2.8 ms with 128 (``perf/traces.py rate``, quiet machine), at the same client CPU and
the same chunks per CPU-second for long streams (``perf/client.py saturation``).
"""

from __future__ import annotations

from loadgen.aggregate import Aggregate
from loadgen.records import RequestRecord
from loadgen.store import RequestStore

FLUSH_INTERVAL_S = 0.5
SLICE_CHUNKS = 8192
SLICE_RECORDS = 32


class PointCollector:
    """Finished requests → :class:`Aggregate` (measured ones) and :class:`RequestStore` (all)."""

    def __init__(self, aggregate: Aggregate, store: RequestStore | None = None, warmup_s: float = 0.0) -> None:
        self.aggregate = aggregate
        self.store = store
        # --warmup-seconds: requests released before start + warmup_s count as warm-up
        # (stored, flagged, left out of the figures), so a time-based point measures its steady state.
        # A session is warm-up whole when its first turn was: the figures hold whole sessions.
        self.warmup_ns = int(warmup_s * 1e9)
        self.warm_sessions: set[int] = set()
        self.start_ns: int | None = None
        self.pending: list[RequestRecord] = []
        self.warmup_requests = 0

    def begin(self, start_ns: int) -> None:
        """The point's clock started: stored times are relative to ``start_ns``."""
        self.start_ns = start_ns

    def push(self, rec: RequestRecord) -> None:
        self.pending.append(rec)

    def flush(self, max_chunks: int = SLICE_CHUNKS, max_records: int = SLICE_RECORDS) -> bool:
        """Reduce one slice of the pending requests; True when more is pending."""
        if not self.pending or self.start_ns is None:
            return False  # warm-up requests wait for the clock's start, so their times are relative to it
        n, chunks = 0, 0
        for rec in self.pending:
            n += 1
            chunks += len(rec.chunk_ns)
            if chunks >= max_chunks or n >= max_records:
                break
        batch, self.pending = self.pending[:n], self.pending[n:]
        if self.warmup_ns:
            cut = self.start_ns + self.warmup_ns
            warm_sessions = self.warm_sessions
            for r in batch:
                if r.session >= 0 and r.turn > 0:
                    # a session's turns end in order, so its first turn was judged already
                    if r.session in warm_sessions:
                        r.warmup = True
                # released = sent through the concurrency gate (closed loop: every intended time is 0)
                elif (r.sent_ns or r.intended_ns) < cut:
                    r.warmup = True
                    if r.session >= 0:
                        warm_sessions.add(r.session)
                elif r.session >= 0:
                    warm_sessions.discard(r.session)  # an id used again (a cycled set) starts afresh
        measured = [r for r in batch if not r.warmup]
        self.warmup_requests += len(batch) - len(measured)
        self.aggregate.add(measured)
        if self.store is not None:
            self.store.append(batch, self.start_ns)
        return bool(self.pending)

    def close(self, start_ns: int) -> None:
        """Flush what is left (``start_ns`` if the clock never started) and close the store."""
        if self.start_ns is None:
            self.start_ns = start_ns
        while self.flush():  # in slices here too: one reduction of a whole last wave is a memory spike
            pass
        if self.store is not None:
            self.store.close()
