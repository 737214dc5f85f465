"""The progress display: driven by counters and ticks, plain lines off a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from loadgen.client import LiveCounters
from loadgen.progress import Progress, warnings_of


def test_plain_lines_when_not_a_terminal() -> None:
    counters = LiveCounters()
    buf = io.StringIO()
    with Progress(counters, 20, "c=2 rate=inf", console=Console(file=buf, width=120), plain_every_s=0.0) as prog:
        for _ in range(3):
            counters.completed += 5
            counters.output_tokens += 50
            counters.in_flight = 2
            prog.tick(counters)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[-1].startswith("c=2 rate=inf: 15/20 done, 2 in flight,") and "0 errors" in lines[-1]
    assert "\x1b" not in buf.getvalue()


def test_live_display_on_a_terminal_is_transient() -> None:
    counters = LiveCounters(completed=3, failed=1)
    buf = io.StringIO()
    with Progress(counters, 10, "live", console=Console(file=buf, force_terminal=True, width=120)) as prog:
        prog.tick(counters)
    assert "3/10 done" in buf.getvalue() and "1 errors" in buf.getvalue()


def test_disabled_progress_prints_nothing() -> None:
    buf = io.StringIO()
    with Progress(LiveCounters(), 1, "off", console=Console(file=buf), enabled=False, plain_every_s=0.0) as prog:
        prog.tick()
    assert buf.getvalue() == ""


def test_warnings_name_every_caveat() -> None:
    text = " ".join(warnings_of({
        "partial": True, "failed": 2, "errors_by_kind": {"timeout": 2}, "prompt_token_mismatches": 3,
        "prompt_tokens_checked": 10, "prompt_token_max_diff": 1, "client_saturated": True,
        "loop_lag_p99_ms": 25.0, "client_saturation_lag_p99_ms": 10.0,
    }))
    assert "PARTIAL" in text and "timeout=2" in text and "MISMATCH" in text and "SATURATED" in text
    assert warnings_of({"failed": 0, "partial": False}) == []
