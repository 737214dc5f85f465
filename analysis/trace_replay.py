"""Trace replays (``loadgen --dataset-name mooncake|azure|burstgpt``): how late requests went
out against the trace's times, and whether the replay kept up, as flat run columns and the
summary table's names for them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from analysis.sections import section, shown_if_any, sub

# run column -> summary.csv name; only runs replayed at a trace's times fill the lag columns
SUMMARY_COLUMNS = {
    "trace_lag_p50_ms": "trace lag p50(ms)",
    "trace_lag_p99_ms": "trace lag p99(ms)",
    "trace_lag_max_ms": "trace lag max(ms)",
    "trace_behind": "replay behind",
    "client_saturated": "client saturated",
}


def trace_columns(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Flat columns from a result's ``trace`` object; none for a run that replayed no trace."""
    trace = section(obj, "trace")
    if trace is None:
        return {}
    lag = sub(trace, "lag_ms")
    behind = trace.get("behind")
    return {
        "trace_format": trace.get("format"),
        "trace_lag_p50_ms": lag.get("p50"),
        "trace_lag_p99_ms": lag.get("p99"),
        "trace_lag_max_ms": lag.get("max"),
        # None (not False) where nothing was late against: --trace-timing order has no trace times
        "trace_behind": bool(behind) if isinstance(behind, bool) else None,
    }


def summary_columns(runs: pd.DataFrame) -> dict[str, str]:
    """The replay columns to show: all of them when any run replayed a trace, else none."""
    return shown_if_any(runs, "trace_format", SUMMARY_COLUMNS)
