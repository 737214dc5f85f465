"""``loadgen compare BASE NEW``: result folders in, one verdict per metric and point out.

This module joins the two sides point by point (same workload, lengths,
concurrency and rate), refuses sides that share no point with one line naming
the difference, turns each run's per-request data into
:class:`analysis.regression.Requests` and renders the verdicts as a markdown
table (for a CI summary) or JSON. The statistics are in :mod:`analysis.regression`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.regression import (
    IMPROVEMENT,
    REGRESSION,
    UNKNOWN,
    Estimate,
    Metric,
    Requests,
    Side,
    judge,
)

# What makes two runs measurements of the same point; the first that differs is named when nothing matches.
POINT_KEYS = (
    ("dataset", "dataset"),
    ("input_len", "input length"),
    ("output_len", "output length"),
    ("ignore_eos", "ignore_eos"),
    ("concurrency", "concurrency"),
    ("request_rate", "request rate"),
)

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_NOT_JUDGED = 3


class NotComparable(AnalysisError, ValueError):
    """BASE and NEW measured different things; the message is one line naming the difference."""


@dataclass
class PointResult:
    """The verdicts of one point shared by both sides."""

    point: dict[str, Any]
    estimates: list[Estimate]
    notes: list[str] = field(default_factory=list)


@dataclass
class GateResult:
    """Every compared point, the points only one side has, and the exit code they add up to."""

    points: list[PointResult]
    unmatched: list[str]
    threshold: float
    gated: tuple[str, ...]

    @property
    def regressions(self) -> list[tuple[dict[str, Any], Estimate]]:
        return [(p.point, e) for p in self.points for e in p.estimates
                if e.metric.key in self.gated and e.verdict == REGRESSION]

    @property
    def not_judged(self) -> list[tuple[dict[str, Any], Estimate]]:
        return [(p.point, e) for p in self.points for e in p.estimates
                if e.metric.key in self.gated and e.verdict == UNKNOWN]

    @property
    def exit_code(self) -> int:
        if self.regressions:
            return EXIT_REGRESSION
        return EXIT_NOT_JUDGED if self.not_judged else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold, "gated": list(self.gated), "exit_code": self.exit_code,
            "points": [{"point": _plain(p.point), "notes": p.notes,
                        "metrics": [{**e.to_dict(), "gated": e.metric.key in self.gated} for e in p.estimates]}
                       for p in self.points],
            "unmatched": self.unmatched,
        }


def _plain(point: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in point.items():
        if isinstance(v, float) and math.isinf(v):
            v = "inf"
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def _key_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def point_of(run: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(_key_value(run.get(col)) for col, _ in POINT_KEYS)


def _show(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return str(value)


def first_difference(base: Sequence[tuple[Any, ...]], new: Sequence[tuple[Any, ...]]) -> str:
    """One line naming what differs between the points of two sides that share none."""
    for i, (_, name) in enumerate(POINT_KEYS):
        b = sorted({_show(p[i]) for p in base})
        n = sorted({_show(p[i]) for p in new})
        if b != n:
            return (f"not comparable: {name} differs (base {', '.join(b)}; new {', '.join(n)}); "
                    "compare runs of the same workload, lengths, concurrency and rate")
    return "not comparable: the two sides share no point"


# --- from files to Requests ----------------------------------------------------------------------

def _record(path: Path, index: int) -> dict[str, Any]:
    """The raw result record a run row came from (for what the run row leaves out)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        lines = [line for line in text.splitlines() if line.strip()]
        return json.loads(lines[index]) if index < len(lines) else {}
    obj = json.loads(text)
    if isinstance(obj, list):
        return obj[index] if index < len(obj) and isinstance(obj[index], dict) else {}
    return obj if isinstance(obj, dict) else {}


def _inline_itls(record: Mapping[str, Any], frame: pd.DataFrame) -> list[np.ndarray] | None:
    """loadgen keeps small points' gaps in the result (seconds, in prompt order): match them to the rows."""
    itls = record.get("itls")
    if not isinstance(itls, list) or len(itls) != len(frame) or "prompt_id" not in frame.columns:
        return None
    order = np.argsort(frame["prompt_id"].to_numpy(), kind="stable")
    out: list[np.ndarray] = [np.zeros(0)] * len(frame)
    for rank, row in enumerate(order):
        gaps = itls[rank]
        out[row] = np.asarray(gaps if isinstance(gaps, list) else [], np.float64) * 1000.0
    return out


def _good(frame: pd.DataFrame, slos: Any, ok: np.ndarray) -> np.ndarray | None:
    """vLLM's goodput rule on the recorded SLOs: a completed request that meets every limit."""
    if not isinstance(slos, Mapping) or not slos:
        return None
    good = ok.copy()
    for name, limit in slos.items():
        col = f"{name}_ms"
        if col not in frame.columns or not isinstance(limit, int | float):
            return None
        good &= np.nan_to_num(frame[col].to_numpy(np.float64), nan=0.0) <= float(limit)
    return good


def requests_from_frame(frame: pd.DataFrame, record: Mapping[str, Any], duration_s: float) -> Requests | None:
    """One run's measured requests as arrays; None when the run has no per-request data."""
    if frame.empty:
        return None
    if "warmup" in frame.columns:
        frame = frame[~frame["warmup"].fillna(False).astype(bool)]
    frame = frame.reset_index(drop=True)
    n = len(frame)
    if not n:
        return None
    ok = frame["ok"].fillna(False).to_numpy(bool) if "ok" in frame.columns else np.ones(n, bool)
    if "sent_ms" in frame.columns and np.isfinite(frame["sent_ms"].to_numpy(np.float64)).all():
        sent = frame["sent_ms"].to_numpy(np.float64)
    else:  # no send times (vLLM's lists): their order stands for time, spread over the run
        sent = np.arange(n) * (duration_s * 1000.0 / n)
    values = {c: frame[c].to_numpy(np.float64) for c in ("ttft_ms", "tpot_ms", "e2el_ms") if c in frame.columns}
    if "last_ms" in frame.columns:
        end = np.where(ok, frame["last_ms"].to_numpy(np.float64), np.nan)
    else:
        end = sent + values.get("e2el_ms", np.full(n, np.nan))
    tok_col = "output_tokens" if "output_tokens" in frame.columns else "output_len"
    tokens = np.where(ok, pd.to_numeric(frame[tok_col], errors="coerce").fillna(0).to_numpy(np.float64), 0.0) \
        if tok_col in frame.columns else np.zeros(n)
    if "itls_ms" in frame.columns:
        itls: list[np.ndarray] | None = [np.asarray(g if isinstance(g, list) else [], np.float64)
                                         for g in frame["itls_ms"]]
    else:
        itls = _inline_itls(record, frame)
    return Requests(sent_ms=sent, end_ms=end, values=values, tokens=tokens, span_s=duration_s, itls=itls,
                    good=_good(frame, record.get("goodput_slos_ms"), ok))


def sides(runs: pd.DataFrame) -> dict[tuple[Any, ...], Side]:
    """Runs grouped by point, each with its per-request data and run figures."""
    from analysis.load import requests_of
    from analysis.regression import METRICS

    out: dict[tuple[Any, ...], Side] = {}
    for _, run in runs.iterrows():
        side = out.setdefault(point_of(run), Side())
        side.run_figures.append({m.run_figure: float(pd.to_numeric(run.get(m.run_figure), errors="coerce"))
                                 for m in METRICS})
        path = Path(run["path"])
        record = _record(path, int(run.get("record") or 0))
        duration = float(pd.to_numeric(run.get("duration"), errors="coerce"))
        if not (math.isfinite(duration) and duration > 0):
            continue
        req = requests_from_frame(requests_of(path, record), record, duration)
        if req is not None:
            side.requests.append(req)
    for side in out.values():  # a side whose runs do not all have per-request data is judged by its repeats
        if len(side.requests) != side.repeats:
            side.requests = []
    return out


def gate(base_runs: pd.DataFrame, new_runs: pd.DataFrame, metrics: Sequence[Metric], gated: Sequence[str],
         threshold: float, n_boot: int = 2000) -> GateResult:
    """Judge every point both sides measured. Raises :class:`NotComparable` when they share none."""
    base, new = sides(base_runs), sides(new_runs)
    shared = [k for k in base if k in new]
    if not shared:
        raise NotComparable(first_difference(list(base), list(new)))
    names = [col for col, _ in POINT_KEYS]
    points = []
    for key in shared:
        estimates = judge(base[key], new[key], metrics, threshold, n_boot=n_boot)
        notes = []
        if any(e.metric.key == "goodput" and e.verdict == UNKNOWN for e in estimates):
            notes.append("goodput needs the same --goodput SLOs recorded on both sides")
        points.append(PointResult(dict(zip(names, key, strict=True)), estimates, notes))
    unmatched = [f"{'base' if k in base else 'new'} only: {_point_text(dict(zip(names, k, strict=True)))}"
                 for k in [*base, *new] if k not in shared]
    return GateResult(points, unmatched, threshold, tuple(gated))


def _point_text(point: Mapping[str, Any]) -> str:
    rate = point.get("request_rate")
    return (f"{point.get('dataset')} {_show(point.get('input_len'))}→{_show(point.get('output_len'))} tokens, "
            f"concurrency {_show(point.get('concurrency'))}, rate {_show(rate)}")


# --- rendering -----------------------------------------------------------------------------------

def _num(x: float) -> str:
    if not math.isfinite(x):
        return "—"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def _pct(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x * 100:+.1f} %"


def _mark(est: Estimate, gated: bool) -> str:
    text = est.verdict
    if est.verdict == REGRESSION:
        text = f"**{text}**" if gated else text
    elif est.verdict == IMPROVEMENT:
        text = f"_{text}_"
    return text


def markdown(result: GateResult, base_name: str, new_name: str) -> str:
    """The CI summary: a verdict line, then one table per point."""
    lines = []
    regs = result.regressions
    if regs:
        what = ", ".join(f"{e.metric.title} {_pct(e.change)}" for _, e in regs)
        lines.append(f"**FAIL** — regression beyond {result.threshold * 100:g} %: {what}")
    elif result.not_judged:
        lines.append(f"**NOT JUDGED** — no interval for {', '.join(e.metric.title for _, e in result.not_judged)}")
    else:
        lines.append(f"**PASS** — no gated metric regressed beyond {result.threshold * 100:g} %")
    lines.append("")
    lines.append(f"`{new_name}` (new) against `{base_name}` (base); 95 % intervals of the relative change.")
    for p in result.points:
        lines += ["", f"### {_point_text(p.point)}", "",
                  "| metric | base | new | change | 95 % interval | verdict | method |",
                  "|---|---:|---:|---:|---|---|---|"]
        for e in p.estimates:
            gated = e.metric.key in result.gated
            interval = "—" if not math.isfinite(e.low) else f"{_pct(e.low)} … {_pct(e.high)}"
            title = e.metric.title if gated else f"{e.metric.title} (not gated)"
            lines.append(f"| {title} | {_num(e.base)} | {_num(e.new)} | {_pct(e.change)} | {interval} | "
                         f"{_mark(e, gated)} | {e.method} |")
        lines += [f"\n{note}" for note in p.notes]
    if result.unmatched:
        lines += ["", "Points measured on one side only (not compared): " + "; ".join(result.unmatched)]
    return "\n".join(lines) + "\n"
