"""Scrapes of one point → the compact ``server_metrics`` / ``gpu_metrics`` result entries.

Pure functions of the collected ticks and the run's window (both on the client's
``perf_counter_ns`` clock), so they are tested without a server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from loadgen.telemetry.gpu import COUNTERS as GPU_COUNTERS
from loadgen.telemetry.gpu import FIELDS as GPU_FIELDS
from loadgen.telemetry.page import Hist, delta, quantile
from loadgen.telemetry.scrape import ScrapeLog, Tick
from loadgen.telemetry.vocab import engine_of, vllm_generation

TIMELINE_GAUGES = ("running", "waiting", "kv_usage", "prefix_hit_rate", "gen_throughput")
TIMELINE_COUNTERS = ("preemptions", "prompt_tokens", "generation_tokens")
TIMELINE_LATENCIES = ("ttft", "itl", "e2el", "queue")
LATENCY_QUANTILES = (0.5, 0.9, 0.99)


def _r(value: float | None, nd: int = 4) -> float | None:
    return None if value is None or math.isnan(value) else round(value, nd)


def _within(ticks: Sequence[Tick], start_ns: int, end_ns: int) -> list[Tick]:
    inside = [t for t in ticks if start_ns <= t.t_ns <= end_ns]
    return inside or list(ticks)


def _counter_delta(ticks: Sequence[Tick], key: str) -> float | None:
    vals = [t.values[key] for t in ticks if key in t.values]
    if len(vals) < 2:
        return None
    total = 0.0
    for a, b in zip(vals, vals[1:], strict=False):
        total += b - a if b >= a else b  # a reset (server restart) starts from zero
    return total


def timeline(log: ScrapeLog, start_ns: int) -> dict[str, list[Any]]:
    """Columns over time: t_s from the run's start, gauges as read, counters since the first
    scrape, server latencies as the mean of what finished in each interval (ms)."""
    ticks = log.ticks
    out: dict[str, list[Any]] = {"t_s": [_r((t.t_ns - start_ns) / 1e9, 3) for t in ticks]}
    if any(t.in_flight is not None for t in ticks):
        out["client_in_flight"] = [t.in_flight for t in ticks]
    for key in TIMELINE_GAUGES:
        if any(key in t.values for t in ticks):
            out[key] = [_r(t.values.get(key)) for t in ticks]
    for key in TIMELINE_COUNTERS:
        base = next((t.values[key] for t in ticks if key in t.values), None)
        if base is not None:
            out[key] = [_r(t.values[key] - base) if key in t.values else None for t in ticks]
    for key in TIMELINE_LATENCIES:
        if not any(key in t.hists for t in ticks):
            continue
        col: list[float | None] = []
        prev: tuple[float, float] | None = None
        for t in ticks:
            cur = t.hists.get(key)
            if cur is None or prev is None or cur[1] <= prev[1]:
                col.append(None)
            else:
                col.append(_r((cur[0] - prev[0]) / (cur[1] - prev[1]) * 1000.0, 3))
            prev = cur if cur is not None else prev
        out[f"server_{key}_ms"] = col
    return out


def _latency(first: Hist | None, last: Hist) -> dict[str, float | None]:
    d = delta(last, first)
    out: dict[str, float | None] = {
        "count": d.count,
        "mean_ms": _r(d.sum / d.count * 1000.0, 3) if d.count > 0 else None,
    }
    pairs = list(d.buckets.items())
    for q in LATENCY_QUANTILES:
        v = quantile(pairs, q)
        out[f"p{int(q * 100)}_ms"] = _r(v * 1000.0, 3) if v is not None else None
    return out


def summary(log: ScrapeLog, start_ns: int, end_ns: int) -> dict[str, Any]:
    """Point figures: over the scrapes inside the run for gauges, over the whole bracket
    (before → after the run, warm-up included) for counters and histograms."""
    inside = _within(log.ticks, start_ns, end_ns)
    out: dict[str, Any] = {}
    for key, label in (("kv_usage", "kv_usage"), ("running", "running"), ("waiting", "waiting")):
        vals = [t.values[key] for t in inside if key in t.values]
        if vals:
            out[f"{label}_mean"] = _r(sum(vals) / len(vals))
            out[f"{label}_max"] = _r(max(vals))
    if "kv_usage_max" in out:
        out["kv_usage_peak"] = out.pop("kv_usage_max")
    for key in ("preemptions", "prompt_tokens", "generation_tokens", "prefix_cache_hits", "prefix_cache_queries"):
        d = _counter_delta(log.ticks, key)
        if d is not None:
            out[key] = _r(d)
    hits, queries = out.get("prefix_cache_hits"), out.get("prefix_cache_queries")
    if hits is not None and queries is None:  # SGLang counts cached tokens, not lookups: every prompt token is one
        queries = out.get("prompt_tokens")
    if queries:
        out["prefix_hit_rate"] = _r(hits / queries)
    else:
        rates = [t.values["prefix_hit_rate"] for t in inside if "prefix_hit_rate" in t.values]
        if rates:
            out["prefix_hit_rate"] = _r(sum(rates) / len(rates))
    gen = [t.values["gen_throughput"] for t in inside if "gen_throughput" in t.values]
    if gen:
        out["gen_throughput_mean"] = _r(sum(gen) / len(gen), 2)
    model_s = _counter_delta(log.ticks, "sim_model_time")
    if model_s and "sim_lag" in log.last:
        lag = delta(log.last["sim_lag"], log.first.get("sim_lag"))
        out["emulator_lag_share"] = _r(max(lag.sum, 0.0) / model_s)
    return out


def server_entry(log: ScrapeLog, url: str, interval_s: float, start_ns: int, end_ns: int,
                 side_file: str | None, message: str | None) -> dict[str, Any]:
    """The result's ``server_metrics`` value."""
    names = dict(log.names)
    engine = engine_of(log.engine_names) or engine_of(set(names.values()))
    span_s = max(log.thread_wall_s, 1e-9)
    entry: dict[str, Any] = {
        "url": url,
        "interval_s": interval_s,
        "engine": engine,
        "vllm_names": vllm_generation(names) if engine in ("vllm", "sim") else None,
        "names": names,
        "scrapes": len(log.ticks),
        "failed_scrapes": log.errors,
        "last_error": log.last_error,
        "scraper_cpu_s": _r(log.thread_cpu_s, 6),
        "scraper_cpu_pct": _r(log.thread_cpu_s / span_s * 100.0, 4) if log.thread_wall_s else None,
        "file": side_file,
        "message": message,
        "summary": summary(log, start_ns, end_ns),
        "server_latency": {k: _latency(log.first.get(k), log.last[k]) for k in TIMELINE_LATENCIES + ("tpot", "sim_lag")
                           if k in log.last},
        "timeline": timeline(log, start_ns),
    }
    return entry


def gpu_entry(log: ScrapeLog, source: str | None, url: str | None, start_ns: int, end_ns: int,
              message: str | None) -> dict[str, Any]:
    """The result's ``gpu_metrics`` value: per GPU and field, a column over time and a summary."""
    ticks = [t for t in log.ticks if t.gpu]
    gpus = sorted({g for t in ticks for g in (t.gpu or {})}, key=lambda g: (len(g), g))
    entry: dict[str, Any] = {"source": source if ticks else None, "url": url, "message": message,
                             "gpus": gpus, "read_errors": log.gpu_errors}
    if not ticks:
        return entry
    entry["timeline"] = {"t_s": [_r((t.t_ns - start_ns) / 1e9, 3) for t in ticks]}
    summ: dict[str, Any] = {}
    inside = _within(ticks, start_ns, end_ns)
    for fld in GPU_FIELDS:
        entry["timeline"][fld] = [[_r((t.gpu or {}).get(g, {}).get(fld), 2) for g in gpus] for t in ticks]
        vals = [(t.gpu or {})[g][fld] for t in inside for g in gpus if fld in (t.gpu or {}).get(g, {})]
        if vals and fld not in GPU_COUNTERS:
            summ[f"{fld}_mean"] = _r(sum(vals) / len(vals), 2)
            summ[f"{fld}_max"] = _r(max(vals), 2)
    joules = energy(ticks, gpus, start_ns, end_ns)
    if joules is not None:
        summ["energy_j"] = _r(joules, 3)
        summ["energy_window_s"] = _r((end_ns - start_ns) / 1e9, 4)
        summ["energy_mean_power_w"] = _r(joules / max((end_ns - start_ns) / 1e9, 1e-9), 2)
    entry["summary"] = summ
    return entry


def energy(ticks: Sequence[Tick], gpus: Sequence[str], start_ns: int, end_ns: int) -> float | None:
    """Joules all GPUs used over the window, from their energy counters.

    The counter is read at the scrapes, not at the window's edges: the energy between
    the readings that fall in (or nearest to) the window, interpolated linearly at its
    edges and scaled by the window over the time covered. A counter that went back
    (a driver reload) makes that GPU's figure absent rather than wrong.
    """
    total, found = 0.0, False
    for g in gpus:
        pts = [(t.t_ns, (t.gpu or {})[g]["energy_j"]) for t in ticks if "energy_j" in (t.gpu or {}).get(g, {})]
        if len(pts) < 2 or any(b[1] < a[1] for a, b in zip(pts, pts[1:], strict=False)):
            continue
        lo, hi = max(start_ns, pts[0][0]), min(end_ns, pts[-1][0])
        if hi <= lo:
            lo, hi = pts[0][0], pts[-1][0]
        if hi <= lo:
            continue
        covered = _at(pts, hi) - _at(pts, lo)
        total += covered * (end_ns - start_ns) / (hi - lo)
        found = True
    return total if found else None


def _at(pts: Sequence[tuple[int, float]], t: int) -> float:
    """The counter at ``t``, linear between the readings around it."""
    for (t0, e0), (t1, e1) in zip(pts, pts[1:], strict=False):
        if t0 <= t <= t1:
            return e0 + (e1 - e0) * (t - t0) / (t1 - t0) if t1 > t0 else e1
    return pts[0][1] if t < pts[0][0] else pts[-1][1]

