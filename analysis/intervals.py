"""Confidence intervals across repeated runs of a point (``loadgen --repeat K``).

Method (``docs/analysis.md#confidence-intervals``): the K runs of one point (same
label, lengths, concurrency and rate) are K independent samples of that point's
figures — its mean TTFT, its p99 TPOT, its throughput. The interval of a figure
is a percentile bootstrap of their mean: draw K runs with replacement, take the
mean of the figure over the draw, 2,000 times with a fixed seed; the interval is
the 2.5th and 97.5th percentiles of those means. A percentile is treated like a
mean: each run's p99 is one sample of "the p99 of a run of this size", so the
interval says how much that figure moves from run to run, which is what decides
whether a difference between two engines is real.

The bootstrap is honest only with enough repeats: with K = 2 it is little more
than the range of the two runs, and below 5 it is too narrow more often than its
nominal 95 %. One run gives no interval (NaN), never a zero-width one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
N_BOOT = 2000
SEED = 0
POINT_KEYS = ("label", "input_len", "output_len", "concurrency", "request_rate")
FIGURES = (
    "output_throughput", "request_throughput", "input_throughput",
    "mean_ttft_ms", "p50_ttft_ms", "p90_ttft_ms", "p99_ttft_ms",
    "mean_tpot_ms", "p50_tpot_ms", "p90_tpot_ms", "p99_tpot_ms",
    "mean_itl_ms", "p50_itl_ms", "p99_itl_ms",
    "mean_e2el_ms", "p50_e2el_ms", "p99_e2el_ms",
)


def bootstrap_mean(values: Sequence[float], confidence: float = CONFIDENCE, n_boot: int = N_BOOT,
                   seed: int = SEED) -> tuple[float, float, float]:
    """(mean, low, high) of ``values`` (NaNs dropped); low and high are NaN below two values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if not x.size:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(low), float(high)


def annotate(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` plus ``repeats`` (runs of the same point) and ``<figure>_ci_low``/``_ci_high`` per figure.

    The interval columns are the same on every repeat of a point, so averaging
    the repeats (as tables and plots do) keeps them.
    """
    out = runs.copy()
    keys = [k for k in POINT_KEYS if k in out.columns]
    if out.empty or not keys:
        out["repeats"] = 1
        return out
    figures = [f for f in FIGURES if f in out.columns]
    grouped = out.groupby(keys, dropna=False, sort=False)
    out["repeats"] = grouped[keys[0]].transform("size")
    for fig in figures:
        low = pd.Series(np.nan, index=out.index)
        high = pd.Series(np.nan, index=out.index)
        for _, idx in grouped.groups.items():
            if len(idx) < 2:
                continue
            _, lo, hi = bootstrap_mean(pd.to_numeric(out.loc[idx, fig], errors="coerce").tolist())
            low[idx], high[idx] = lo, hi
        out[f"{fig}_ci_low"] = low
        out[f"{fig}_ci_high"] = high
    return out


def separated(a: tuple[float, float], b: tuple[float, float]) -> bool | None:
    """True when two intervals do not overlap, False when they do, None when either is missing."""
    if any(v is None or math.isnan(v) for v in (*a, *b)):
        return None
    return a[1] < b[0] or b[1] < a[0]
