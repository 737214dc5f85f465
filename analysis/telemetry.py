"""What the server was doing: telemetry columns, explanations, and a timeline per point.

Client figures show symptoms; the ``server_metrics`` a loadgen result carries
(scraped from the engine's ``/metrics`` during the point) say why: requests
queued at the server, a full KV cache, preemptions. This module turns them into
summary columns, notes for the comparability list, and one timeline figure per
point with the client's view beside the server's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from analysis.issues import Issue

# run-row column → (where in server_metrics.summary, summary-table name)
SERVER_COLUMNS: dict[str, tuple[str, str]] = {
    "server_kv_usage_peak": ("kv_usage_peak", "peak KV usage"),
    "server_kv_usage_mean": ("kv_usage_mean", "mean KV usage"),
    "server_waiting_max": ("waiting_max", "max waiting"),
    "server_preemptions": ("preemptions", "preemptions"),
    "server_running_mean": ("running_mean", "mean running"),
    "server_prefix_hit_rate": ("prefix_hit_rate", "prefix hit rate"),
}
LATENCY_COLUMNS = {
    "server_mean_ttft_ms": "server mean TTFT(ms)",
    "ttft_outside_engine_ms": "TTFT outside engine(ms)",
    "server_mean_itl_ms": "server mean ITL(ms)",
}
KV_FULL = 0.98  # peak usage at or above this counts as a full cache
QUEUE_SHARE = 0.5  # server queue time above this share of TTFT: "TTFT is mostly queue time"


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def server_columns(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Run-row columns from a result's ``server_metrics`` (empty when it has none)."""
    sm = obj.get("server_metrics")
    if not isinstance(sm, Mapping) or not sm.get("scrapes"):
        return {}
    summ = _mapping(sm.get("summary"))
    row: dict[str, Any] = {col: _num(summ.get(key)) for col, (key, _) in SERVER_COLUMNS.items()}
    lat = _mapping(sm.get("server_latency"))
    ttft = _num((lat.get("ttft") or {}).get("mean_ms"))
    queue = _num((lat.get("queue") or {}).get("mean_ms"))
    row["server_mean_ttft_ms"] = ttft
    row["server_mean_queue_ms"] = queue
    row["server_mean_itl_ms"] = _num((lat.get("itl") or {}).get("mean_ms"))
    client = _num(obj.get("mean_ttft_ms"))
    row["ttft_outside_engine_ms"] = client - ttft if client is not None and ttft is not None else None
    row["server_engine"] = sm.get("engine")
    row["has_server_timeline"] = bool((sm.get("timeline") or {}).get("t_s"))
    return row


def summary_columns(runs: pd.DataFrame) -> dict[str, str]:
    """Telemetry columns for the summary table, only those some run recorded."""
    named = {col: name for col, (_, name) in SERVER_COLUMNS.items()} | LATENCY_COLUMNS
    return {c: n for c, n in named.items() if c in runs.columns and runs[c].notna().any()}


def _where(group: pd.DataFrame) -> str:
    concs = sorted({int(c) for c in group["concurrency"].dropna()})
    return "concurrency " + ", ".join(str(c) for c in concs) if concs else "some points"


def check_server(runs: pd.DataFrame) -> list[Issue]:
    """Notes that explain client latencies from what the server reported."""
    if "server_waiting_max" not in runs.columns:
        return []
    issues: list[Issue] = []
    for label, group in runs.groupby("label", sort=True):
        queued = group[pd.to_numeric(group["server_waiting_max"], errors="coerce").fillna(0) > 0]
        if not queued.empty:
            share = (pd.to_numeric(queued.get("server_mean_queue_ms"), errors="coerce")
                     / pd.to_numeric(queued.get("mean_ttft_ms"), errors="coerce"))
            mostly = queued[share.fillna(0) >= QUEUE_SHARE] if share.notna().any() else queued
            if not mostly.empty:
                issues.append(Issue("server_queue", "note",
                                    f"{label}: requests queued at the server at {_where(mostly)} (up to "
                                    f"{int(mostly['server_waiting_max'].max())} waiting): TTFT is mostly queue time.",
                                    (label,)))
        pre = group[pd.to_numeric(group.get("server_preemptions"), errors="coerce").fillna(0) > 0]
        if not pre.empty:
            issues.append(Issue("server_preemptions", "note",
                                f"{label}: preemptions happened at {_where(pre)} ({int(pre['server_preemptions'].sum())} "
                                "in all): latency includes recomputation.", (label,)))
        full = group[pd.to_numeric(group.get("server_kv_usage_peak"), errors="coerce").fillna(0) >= KV_FULL]
        if not full.empty:
            issues.append(Issue("server_kv_full", "note",
                                f"{label}: KV cache full at {_where(full)} (peak "
                                f"{full['server_kv_usage_peak'].max():.0%}): the engine could not admit more "
                                "requests; throughput there is capped by KV memory.", (label,)))
    return issues


# ------------------------------------------------------------------ timeline per point


def client_in_flight(requests: pd.DataFrame, t_s: np.ndarray) -> np.ndarray:
    """Requests in flight at each time (s from the run's start), from per-request sent/last times."""
    sent = pd.to_numeric(requests.get("sent_ms"), errors="coerce").to_numpy(dtype=float) / 1000.0
    last = pd.to_numeric(requests.get("last_ms"), errors="coerce").to_numpy(dtype=float) / 1000.0
    ok = np.isfinite(sent)
    sent, last = np.sort(sent[ok]), np.sort(np.where(np.isfinite(last[ok]), last[ok], np.inf))
    return np.searchsorted(sent, t_s, side="right") - np.searchsorted(last, t_s, side="right")
