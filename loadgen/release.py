"""How one request goes out, shared by the runner's release loop and the sessions' turns:
wait for its instant on the ``perf_counter_ns`` clock, then send it through the client."""

from __future__ import annotations

import asyncio
from time import perf_counter_ns

from loadgen.client import StreamClient
from loadgen.records import RequestRecord


async def send(client: StreamClient, rec: RequestRecord, body: bytes, head: bytes | None = None) -> None:
    """One request; a client defect is recorded on ``rec`` (``client_error``), not raised:
    it must not lose the rest of the run."""
    try:
        await client.request(rec, body, head)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if rec.error is None:
            rec.error = "client_error"
            rec.error_detail = f"{type(exc).__name__}: {exc}"[:300]


async def sleep_until(due_ns: int) -> None:
    """Return at the ``perf_counter_ns`` instant ``due_ns`` (at once if it has passed)."""
    wait = due_ns - perf_counter_ns()
    while wait > 0:
        # uvloop's timers have 1 ms resolution and may fire a little early; the
        # last fraction of a millisecond is waited out by yielding to the loop.
        await asyncio.sleep(wait / 1e9 if wait > 1_000_000 else 0)
        wait = due_ns - perf_counter_ns()
