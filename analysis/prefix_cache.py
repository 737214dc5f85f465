"""Prefix-cache figures of a set of runs: the client's hit rate column, the warm-cache
warning as a comparability issue, and the cached fraction of each prompt (drawn against TTFT by
:mod:`analysis.server_plots`).

A loadgen result carries ``prefix_cache`` (client and server hit rates, the warning
for a cache-cold workload that hit a warm cache); the server's hit rate comes in
through :mod:`analysis.telemetry` like every other server figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from analysis.issues import Issue

CLIENT_COLUMN = "client_prefix_hit_rate"
WARNING_COLUMN = "prefix_cache_warning"
PLOT_SAMPLE = 5000  # requests per run in the scatter: enough to see the shape, small enough to draw


def cache_columns(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Run-row columns from a result's ``prefix_cache`` (empty when it has none)."""
    cache = obj.get("prefix_cache")
    if not isinstance(cache, Mapping):
        return {}
    client = cache.get("client")
    rate = client.get("hit_rate") if isinstance(client, Mapping) else None
    return {CLIENT_COLUMN: float(rate) if isinstance(rate, int | float) else None,
            WARNING_COLUMN: cache.get("warning") if isinstance(cache.get("warning"), str) else None}


def summary_columns(runs: pd.DataFrame) -> dict[str, str]:
    """The client's hit rate for the summary table, when some run recorded it."""
    if CLIENT_COLUMN in runs.columns and runs[CLIENT_COLUMN].notna().any():
        return {CLIENT_COLUMN: "client prefix hit rate"}
    return {}


def check_cache(runs: pd.DataFrame) -> list[Issue]:
    """A warning per label whose cache-cold runs hit a warm prefix cache."""
    if WARNING_COLUMN not in runs.columns:
        return []
    issues = []
    for label, group in runs[runs[WARNING_COLUMN].notna()].groupby("label", sort=True):
        issues.append(Issue("warm_prefix_cache", "warning",
                            f"{label}: {len(group)} run(s) of random prompts hit a warm prefix cache (client "
                            f"hit rate up to {pd.to_numeric(group[CLIENT_COLUMN], errors='coerce').max():.0%}): "
                            "their throughput and TTFT are not those of a cold cache; rerun with "
                            "--reset-prefix-cache or --cache-salt auto.", (str(label),)))
    return issues


def cached_fraction(requests: pd.DataFrame) -> pd.Series:
    """Cached share of each request's prompt (NaN where the server did not report it)."""
    if "cached_tokens" not in requests.columns:
        return pd.Series(np.nan, index=requests.index)
    cached = pd.to_numeric(requests["cached_tokens"], errors="coerce")
    prompt = pd.to_numeric(requests.get("server_prompt_tokens"), errors="coerce").fillna(requests["input_len"])
    return (cached / prompt).where(cached >= 0)
