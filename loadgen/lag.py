"""Event-loop lag: how late the client's own loop runs its timers.

Every stamp the client takes is only as good as the loop's promptness: when the loop
is busy, bytes wait in the socket and are stamped late. A timer that asks to run
every ``interval`` and records how late it actually ran measures exactly that delay,
for the cost of ~100 callbacks a second. The samples go into
``RunOutcome.lag_samples_ns``; :mod:`loadgen.metrics` turns them into p50/p99/max and
the ``client_saturated`` flag.

uvloop's timers have millisecond resolution, so an idle loop shows up to ~1 ms of
lag; only values well above that mean the client was busy.
"""

from __future__ import annotations

import asyncio
from time import perf_counter_ns

DEFAULT_INTERVAL_S = 0.010


class LagMonitor:
    """Samples loop lateness into ``samples_ns`` between :meth:`start` and :meth:`stop`."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if not interval_s > 0:
            raise ValueError(f"lag interval must be > 0 s, got {interval_s}")
        self.interval_s = interval_s
        self._interval_ns = int(interval_s * 1e9)
        self.samples_ns: list[int] = []
        self._due = 0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._due = perf_counter_ns() + self._interval_ns
        self._handle = self._loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        now = perf_counter_ns()
        late = now - self._due
        self.samples_ns.append(late if late > 0 else 0)
        self._due = now + self._interval_ns
        self._handle = self._loop.call_later(self.interval_s, self._tick)  # type: ignore[union-attr]

    def stop(self) -> list[int]:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        return self.samples_ns


def lag_percentiles_ms(samples_ns: list[int]) -> tuple[float, float, float]:
    """(p50, p99, max) in ms, nearest-rank; zeros when there are no samples."""
    if not samples_ns:
        return 0.0, 0.0, 0.0
    s = sorted(samples_ns)
    n = len(s)

    def rank(q: float) -> float:
        return s[min(n - 1, max(0, int(q * n + 0.999999) - 1))] / 1e6

    return rank(0.50), rank(0.99), s[-1] / 1e6
