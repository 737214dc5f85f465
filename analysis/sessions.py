"""Session runs (``loadgen --dataset-name sessions``): the result's ``sessions`` object as
flat run columns, and the summary table's names for them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from analysis.sections import section, shown_if_any, sub

# run column -> summary.csv name; only runs that have sessions fill them
SUMMARY_COLUMNS = {
    "sessions": "sessions",
    "sessions_completed": "sessions completed",
    "sessions_failed": "sessions failed",
    "sessions_context_exceeded": "sessions context_exceeded",
    "mean_turns_completed": "mean turns completed",
    "mean_session_duration_s": "mean session duration(s)",
    "p99_session_duration_s": "p99 session duration(s)",
    "first_turn_p50_ttft_ms": "first turn p50 TTFT(ms)",
    "last_turn_p50_ttft_ms": "last turn p50 TTFT(ms)",
}


def session_columns(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Flat columns from a result's ``sessions`` object; none for a run without sessions."""
    s = section(obj, "sessions")
    if s is None:
        return {}
    turns, duration = sub(s, "turns_completed"), sub(s, "session_duration_s")
    by_turn = [t for t in s.get("by_turn") or [] if isinstance(t, Mapping)]
    return {
        "sessions": s.get("sessions"),
        "sessions_completed": s.get("completed"),
        "sessions_failed": s.get("failed"),
        "sessions_context_exceeded": s.get("context_exceeded"),
        "mean_turns_completed": turns.get("mean"),
        "mean_session_duration_s": duration.get("mean"),
        "p99_session_duration_s": duration.get("p99"),
        "first_turn_p50_ttft_ms": by_turn[0].get("p50_ttft_ms") if by_turn else None,
        "last_turn_p50_ttft_ms": by_turn[-1].get("p50_ttft_ms") if by_turn else None,
        "sessions_by_turn": by_turn,  # for the TTFT-by-turn plot (not a summary column)
    }


def summary_columns(runs: pd.DataFrame) -> dict[str, str]:
    """The session columns to show: all of them when any run has sessions, else none."""
    return shown_if_any(runs, "sessions", SUMMARY_COLUMNS)
