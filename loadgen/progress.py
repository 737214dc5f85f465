"""What the user sees while a point runs and when it ends.

The live display never touches the hot path: the runner bumps plain integer counters
and calls :meth:`Progress.tick` on a timer; rates are differences between ticks. On a
TTY it is a rich ``Live`` line; otherwise (CI, pipes) a plain line every few seconds
so logs stay readable.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadgen.metrics import percentile_key


class Progress:
    """Live progress of one point: completed/total, in flight, req/s, output tok/s, errors."""

    def __init__(
        self,
        counters: Any,
        total: int,
        title: str,
        *,
        console: Console | None = None,
        live: bool | None = None,
        plain_every_s: float = 5.0,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.counters = counters
        self.total = total
        self.title = title
        self.console = console or Console(file=stream or sys.stderr)
        self.live_mode = self.console.is_terminal if live is None else live
        self.enabled = enabled
        self.plain_every_s = plain_every_s
        self._window: deque[tuple[float, int, int]] = deque(maxlen=64)
        self._live: Live | None = None
        self._last_plain = 0.0
        self._t0 = time.monotonic()

    def __enter__(self) -> Progress:
        self._t0 = time.monotonic()
        self._last_plain = self._t0
        if self.enabled and self.live_mode:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def tick(self, *_: Any) -> None:
        """Called by the runner every ``tick_s``; cheap, and tolerant of any arguments."""
        if not self.enabled:
            return
        now = time.monotonic()
        self._window.append((now, int(self.counters.completed), int(self.counters.output_tokens)))
        if self._live is not None:
            self._live.update(self._render())
        elif now - self._last_plain >= self.plain_every_s:
            self._last_plain = now
            self.console.print(self.line(), highlight=False, soft_wrap=True)

    def rates(self) -> tuple[float, float]:
        """(req/s, output tok/s) over the last few seconds."""
        now = time.monotonic()
        recent = [w for w in self._window if now - w[0] <= 3.0] or list(self._window)
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return 0.0, 0.0
        dt = recent[-1][0] - recent[0][0]
        return (recent[-1][1] - recent[0][1]) / dt, (recent[-1][2] - recent[0][2]) / dt

    def line(self) -> str:
        c = self.counters
        req_s, tok_s = self.rates()
        elapsed = time.monotonic() - self._t0
        return (
            f"{self.title}: {c.completed}/{self.total} done, {c.in_flight} in flight, "
            f"{req_s:.1f} req/s, {tok_s:.0f} out tok/s, {c.failed} errors, {elapsed:.0f}s"
        )

    def _render(self) -> Text:
        text = Text(self.line())
        if self.counters.failed:
            text.stylize("yellow")
        return text


# ---------------------------------------------------------------- end-of-point summary


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_ms(value: Any) -> str:
    """Latencies keep three or four significant figures and never need truncating."""
    if not isinstance(value, (int, float)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"


def warnings_of(result: Mapping[str, Any]) -> list[str]:
    """The loud lines: anything that makes the figures less than they seem."""
    out = []
    lost = result.get("workers_failed") or []
    if lost:
        out.append(f"PARTIAL: worker(s) {', '.join(map(str, lost))} failed; the figures and the point's store "
                   "cover the other workers' requests only.")
    elif result.get("partial"):
        out.append("PARTIAL: the run was interrupted; figures cover only what finished.")
    if not result.get("completed") and result.get("num_prompts"):
        out.append("NOTHING MEASURED: no request succeeded, so there are no latencies; "
                   "see the errors below and the server's log.")
    store = result.get("per_request") or {}
    if store and not store.get("complete", True) and lost:
        out.append(f"PER-REQUEST STORE: {store.get('rows')} rows, the workers that finished; {store.get('error')}.")
    elif store and not store.get("complete", True):
        out.append(f"PER-REQUEST STORE INCOMPLETE: {store.get('error')}; the figures above are complete "
                   f"(kept in memory), the per-request rows after row {store.get('rows')} were not saved.")
    if result.get("failed"):
        kinds = ", ".join(f"{k}={v}" for k, v in result.get("errors_by_kind", {}).items())
        out.append(f"{result['failed']} request(s) failed ({kinds}).")
    if result.get("prompt_token_mismatches"):
        out.append(
            f"PROMPT LENGTH MISMATCH: {result['prompt_token_mismatches']} of {result['prompt_tokens_checked']} "
            f"requests were counted differently by the server (max diff {result['prompt_token_max_diff']} tokens): "
            "client and server tokenizers or chat templates differ."
        )
    cache = result.get("prefix_cache") or {}
    if cache.get("warning"):
        out.append(f"WARM PREFIX CACHE: {cache['warning']}.")
    out.extend(reasoning_warnings(result))
    if result.get("client_saturated"):
        out.append(
            f"CLIENT SATURATED: event-loop lag p99 {result['loop_lag_p99_ms']:.1f} ms > "
            f"{result['client_saturation_lag_p99_ms']:g} ms; latencies include the client's own delay. "
            "Lower --concurrency or run the client on a less busy machine."
        )
    if result.get("emulator_behind"):
        share = result["server_metrics"]["summary"]["emulator_lag_share"]
        out.append(
            f"SIM BEHIND ITS MODEL: engine steps started {share:.0%} of a step late on average; the sim, not its "
            "profile, paced this run. Give the sim its own core or lower --time-scale."
        )
    trace = result.get("trace") or {}
    if trace.get("behind"):
        out.append(
            f"REPLAY BEHIND: requests went out {trace['lag_ms']['p99']:.1f} ms (p99) after their trace times; "
            "the client did not keep up. Lower --trace-speedup or use --workers."
        )
    skipped = trace.get("skipped_too_long")
    if skipped:
        out.append(f"{skipped} trace request(s) longer than the server's context ({trace.get('max_model_len')} tokens) "
                   "were skipped; --trace-too-long shorten sends them shortened.")
    return out


def _hit_rates(cache: Mapping[str, Any]) -> str:
    """``12.5% / 12.4%``; a side that reported nothing is "not reported", never 0 %."""
    client = (cache.get("client") or {}).get("hit_rate")
    server = (cache.get("server") or {}).get("hit_rate")
    return " / ".join("not reported" if v is None else f"{v:.1%}" for v in (client, server))


def _rates(groups: list[dict[str, Any]] | None, most: int = 12) -> str | None:
    """Hit rates of a trace's windows or a session's turns, in order (``-``: nothing reported there)."""
    if not groups:
        return None
    shown = " ".join("-" if g["hit_rate"] is None else f"{g['hit_rate']:.0%}" for g in groups[:most])
    return shown + (" …" if len(groups) > most else "")


def reasoning_warnings(result: Mapping[str, Any]) -> list[str]:
    """A reasoning model's requests that never answered, and output under an unknown field."""
    out = []
    if result.get("no_answer"):
        out.append(
            f"NO ANSWER: {result['no_answer']} of {result.get('reasoning_requests')} reasoning request(s) spent every "
            "output token reasoning (max_tokens reached before the answer); they count as completed, with no TTFA. "
            "Raise --output-len, or turn thinking off with --chat-template-kwargs '{\"enable_thinking\": false}'."
        )
    fields = result.get("unrecognised_output_fields") or {}
    if fields:
        named = ", ".join(f"'{k}' ({v} request(s))" for k, v in fields.items())
        out.append(
            f"UNRECOGNISED OUTPUT FIELD: text came under delta field {named}, neither 'content' nor a known "
            "reasoning field; its tokens count as output and delay TTFA, but not as reasoning tokens."
        )
    return out


def summary_table(result: Mapping[str, Any]) -> Table:
    """The end-of-point table: throughput and the latency distribution per metric."""
    conc = result.get("max_concurrency")
    rate = result.get("request_rate")
    conc_text = str(conc) if conc is not None else "unlimited"
    if conc is not None and result.get("workers_failed"):  # the limit the run kept, not only the one asked for
        kept = sum(w.get("concurrency") or 0 for w in result.get("per_worker", []) if not w.get("error"))
        conc_text += f" ({kept} after worker(s) {', '.join(map(str, result['workers_failed']))} failed)"
    title = f"{result.get('backend')} {result.get('model_id')}  concurrency={conc_text} rate={rate}"
    head = Table(title=title, show_header=False, box=None, pad_edge=False)
    head.add_column(justify="left")
    head.add_column(justify="right")
    rows = [
        ("Successful requests", result.get("completed")),
        ("Failed requests", result.get("failed")),
        ("Retries after a connection reset", result.get("retries")),
        ("Benchmark duration (s)", result.get("duration")),
        ("Total input tokens", result.get("total_input_tokens")),
        ("Total generated tokens", result.get("total_output_tokens")),
        ("  of which reasoning", result.get("total_reasoning_tokens") if result.get("reasoning_requests") else None),
        ("Request throughput (req/s)", result.get("request_throughput")),
        ("Request goodput (req/s)", result.get("request_goodput")),
        ("Input token throughput (tok/s)", result.get("input_throughput")),
        ("Output token throughput (tok/s)", result.get("output_throughput")),
        ("Total token throughput (tok/s)", result.get("total_token_throughput")),
        ("Ignore EOS", result.get("ignore_eos")),
        ("Prefix cache hit rate (client / server)", _hit_rates(result.get("prefix_cache") or {})),
        ("  by trace window (client)", _rates(((result.get("prefix_cache") or {}).get("by_window") or {}).get("windows"))),
        ("  by session turn (client)", _rates((result.get("prefix_cache") or {}).get("by_turn"))),
        ("Loop lag p99 / max (ms)", f"{_fmt(result.get('loop_lag_p99_ms'))} / {_fmt(result.get('loop_lag_max_ms'))}"),
    ]
    sessions = result.get("sessions")
    if sessions:  # --dataset-name sessions: how the sessions ended, and TTFT from the first turn to the last
        by_turn = sessions.get("by_turn") or [{}]
        rows += [
            ("Sessions completed / failed / context / cut",
             " / ".join(str(sessions.get(k)) for k in ("completed", "failed", "context_exceeded", "cut"))),
            ("Turns per session (mean)", (sessions.get("turns_completed") or {}).get("mean")),
            ("Session duration p50 (s)", (sessions.get("session_duration_s") or {}).get("p50")),
            (f"TTFT p50 first / last turn (ms, turn {by_turn[-1].get('turn')})",
             f"{_fmt(by_turn[0].get('p50_ttft_ms'))} / {_fmt(by_turn[-1].get('p50_ttft_ms'))}"),
        ]
    for name, value in rows:
        if value is None and (name.startswith("Request goodput") or name.startswith("  ")):
            continue
        head.add_row(name, _fmt(value))

    pcts = result.get("percentiles", [])
    lat = Table(box=None, pad_edge=False)
    lat.add_column("ms", no_wrap=True)
    for col in ["mean", "median", "std", *[f"p{percentile_key(p)}" for p in pcts], "max"]:
        lat.add_column(col, justify="right")
    names = {
        "ttft": "TTFT",
        "tpot": "TPOT",
        "itl": "ITL",
        "e2el": "E2EL",
        "queue": "queue",
        "ttft_from_intended": "TTFT+queue",
        "e2el_from_intended": "E2EL+queue",
    }
    if result.get("reasoning_requests"):
        names.update({"ttfa": "TTFA", "reasoning_time": "reasoning", "answer_tpot": "answer TPOT"})
    for key, label in names.items():
        cells = [result.get(f"{s}_{key}_ms") for s in ("mean", "median", "std")]
        cells += [result.get(f"p{percentile_key(p)}_{key}_ms") for p in pcts]
        cells.append(result.get(f"max_{key}_ms"))
        lat.add_row(label, *[_fmt_ms(c) for c in cells])
    outer = Table.grid()
    outer.add_row(head)
    outer.add_row(lat)
    return outer


def print_summary(result: Mapping[str, Any], console: Console, path: str | None = None) -> None:
    console.print(summary_table(result))
    for w in warnings_of(result):
        console.print(f"[bold red]WARNING[/]: {w}", highlight=False)
    if path:
        console.print(f"results: {path}", highlight=False, soft_wrap=True)


def sweep_table(results: Sequence[Mapping[str, Any]]) -> Table:
    """One row per point, for the end of a sweep."""
    table = Table(title="sweep")
    for col in ("concurrency", "rate", "ok", "err", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "TPOT p50", "ITL p99", "flags"):
        table.add_column(col, justify="right")
    for r in results:
        p99 = "p99" if 99.0 in [float(x) for x in r.get("percentiles", [])] else "max"
        flags = " ".join(
            f for f, on in (
                ("partial", r.get("partial")),
                ("saturated", r.get("client_saturated")),
                ("behind", (r.get("trace") or {}).get("behind")),
                ("mismatch", r.get("prompt_token_mismatches")),
                ("warm-cache", (r.get("prefix_cache") or {}).get("warning")),
                ("no-answer", r.get("no_answer")),
            ) if on
        )
        table.add_row(
            _fmt(r.get("max_concurrency")) if r.get("max_concurrency") is not None else "unl.",
            str(r.get("request_rate")),
            _fmt(r.get("completed")),
            _fmt(r.get("failed")),
            _fmt(r.get("request_throughput")),
            _fmt(r.get("output_throughput"), 0),
            _fmt(r.get("median_ttft_ms")),
            _fmt(r.get(f"{p99}_ttft_ms")),
            _fmt(r.get("median_tpot_ms")),
            _fmt(r.get(f"{p99}_itl_ms")),
            flags,
        )
    return table
