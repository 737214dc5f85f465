"""The runner: schedule, concurrency gate, warm-up, duration, ticks, Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from loadgen.lag import lag_percentiles_ms
from loadgen.metrics import SATURATION_LAG_P99_MS
from loadgen.runner import LiveCounters, Target, run
from tests.loadgen.conftest import prompt, schedule_drift, server_json
from tests.servers.stream_server import spawn as stream_server


def overlap_max(recs) -> int:
    """Most requests ever in flight, from the records' own send/last-byte stamps."""
    events = sorted([(r.sent_ns, 1) for r in recs] + [(r.last_ns, -1) for r in recs])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def test_concurrency_gate_is_respected() -> None:
    with stream_server("--ttft-ms", "20", "--itl-ms", "2") as port:
        out = run(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 10) for i in range(40)], None,
                  concurrency=8)
        stats = server_json(port, "/stats")
    assert all(r.ok for r in out.records) and len(out.records) == 40
    assert stats["max_in_flight"] == 8
    assert overlap_max(out.records) <= 8
    assert not out.partial and out.end_ns > out.start_ns and out.lag_samples_ns


def test_releases_follow_absolute_offsets() -> None:
    offsets = [0.05 * i for i in range(20)]
    with stream_server("--ttft-ms", "1", "--itl-ms", "1") as port:
        out = run(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 3) for i in range(20)], offsets)
    assert sorted(rec.prompt_id for rec in out.records) == list(range(20))
    # A send is late only when the loop was: by no more than the longest stall the loop-lag monitor
    # saw (a busy machine's), plus a margin for the send itself.
    longest_stall_ns = max(out.lag_samples_ns)
    for rec in out.records:  # in the order they finished, which a busy machine may shuffle
        off = offsets[rec.prompt_id]
        assert abs(rec.intended_ns - (out.start_ns + int(off * 1e9))) <= 1
        assert 0 <= rec.sent_ns - rec.intended_ns < 50e6 + longest_stall_ns, longest_stall_ns


def poisson_offsets(n: int, rate: float, seed: int = 1) -> list[float]:
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    gaps[0] = 0.0
    return list(np.cumsum(gaps))


def client_saturated(out) -> bool:
    """The product's own rule (the result's ``client_saturated``) applied to a run's loop-lag samples."""
    return lag_percentiles_ms(out.lag_samples_ns)[1] > SATURATION_LAG_P99_MS


def check_rate(n: int, rate: float) -> None:
    offsets = poisson_offsets(n, rate)
    with stream_server("--ttft-ms", "0", "--itl-ms", "0", "--no-truth") as port:
        out = run(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 2) for i in range(n)], offsets)
    assert all(r.ok for r in out.records)
    intended = [r.intended_ns / 1e6 for r in out.records]
    sent = [r.sent_ns / 1e6 for r in out.records]
    late = np.subtract(sent, intended)
    # the sends keep the schedule's rate within 1 %, unless the client's own loop-lag rule says it could not
    lag_p99 = lag_percentiles_ms(out.lag_samples_ns)[1]
    saturated = client_saturated(out)
    drift = schedule_drift(intended, sent)
    assert abs(drift) < 0.01 or saturated, (drift, lag_p99)
    assert np.median(late) < 5 or saturated, (np.median(late), lag_p99)


def test_poisson_rate_has_no_drift() -> None:
    check_rate(1500, 500.0)


@pytest.mark.slow
def test_poisson_4000_at_800_per_s_within_one_percent() -> None:
    check_rate(4_000, 800.0)  # five seconds of releases, 4,000 of them: long enough for any drift to show


def test_rate_and_concurrency_work_together() -> None:
    offsets = [i / 50 for i in range(30)]  # 50 req/s, each request lasts ~200 ms
    with stream_server("--ttft-ms", "100", "--itl-ms", "20") as port:
        out = run(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 6) for i in range(30)], offsets,
                  concurrency=4)
        stats = server_json(port, "/stats")
    assert all(r.ok for r in out.records)
    assert stats["max_in_flight"] == 4
    queue_ms = [(r.sent_ns - r.intended_ns) / 1e6 for r in out.records]
    assert queue_ms[-1] > 200  # the gate held requests back: visible as queue time


def test_duration_stops_releasing() -> None:
    offsets = [i / 100 for i in range(200)]
    with stream_server("--ttft-ms", "1", "--itl-ms", "1") as port:
        out = run(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 3) for i in range(200)], offsets,
                  duration_s=0.3)
    assert 0 < len(out.records) <= 31  # released only while the schedule is inside the 0.3 s
    # a stalled client sends less in that time, and its loop lag says so
    assert len(out.records) >= 20 or client_saturated(out)
    assert all(r.ok for r in out.records) and not out.partial


def test_warmup_is_kept_apart_and_ticks_are_called() -> None:
    ticks: list[tuple[int, int]] = []
    counters = LiveCounters()
    with stream_server("--ttft-ms", "5", "--itl-ms", "10") as port:
        out = run(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 20) for i in range(12)], None,
                  concurrency=4, warmup=3, counters=counters,
                  on_tick=lambda c: ticks.append((c.completed, c.in_flight)), tick_s=0.05)
    assert len(out.warmup_records) == 3 and all(r.warmup and r.ok for r in out.warmup_records)
    assert len(out.records) == 12 and not any(r.warmup for r in out.records)
    assert len(ticks) >= 5
    assert any(in_flight > 0 for _, in_flight in ticks)
    assert ticks[-1] == (12, 0)
    assert counters.started == 12 and counters.output_tokens == 12 * 20


def test_ctrl_c_stops_releasing_and_returns_partial_results() -> None:
    offsets = [0.02 * i for i in range(100)]
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    with stream_server("--ttft-ms", "10", "--itl-ms", "100") as port:
        t0 = time.monotonic()
        timer.start()
        try:
            out = run(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 50) for i in range(100)], offsets,
                      grace_s=0.3)
        finally:
            timer.cancel()
        elapsed = time.monotonic() - t0
    assert out.partial
    assert elapsed < 6  # a whole run lasts at least 7 s: the last release at 1.98 s, then 50 tokens of 100 ms
    assert 0 < len(out.records) < 100  # releasing stopped at the signal
    cancelled = [r for r in out.records if r.error == "cancelled"]
    assert cancelled and all(len(r.chunk_ns) >= 1 for r in cancelled[:5])  # partial measurements kept


def test_bad_arguments_are_rejected_with_a_clear_message() -> None:
    t = Target("http://127.0.0.1:9", "vllm", "m")
    with pytest.raises(ValueError, match="2 release offsets for 1 prompts"):
        run(t, [prompt(0)], [0.0, 1.0])
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        run(t, [prompt(0)], None, concurrency=0)
