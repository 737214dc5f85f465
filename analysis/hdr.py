"""HDR histograms: decode, build from raw samples, merge, and read percentile curves.

Histograms are the only summary that merges exactly across runs (means of
percentiles do not), so every latency distribution is carried as one. Values are
recorded as integers in a unit chosen by the producer; each histogram travels
with ``ms_per_unit`` so that readers never guess the unit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from hdrh.histogram import HdrHistogram

from loadgen.hdr_record import HIGHEST_US, LOWEST_US, histogram_of, new_histogram

PERCENTILE_TICKS = (50.0, 90.0, 99.0, 99.9, 99.99, 99.999)


def from_ms(values_ms: Iterable[float]) -> HdrHistogram:
    """A microsecond histogram of millisecond samples (clamped into the trackable range),
    with loadgen's range and precision."""
    v = np.asarray([x for x in values_ms if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return histogram_of(np.clip(np.rint(v * 1000.0), LOWEST_US, HIGHEST_US))


def decode(payload: str) -> HdrHistogram:
    """A histogram from its compressed base64 form (``HISTF...``), as embedded in results and logs."""
    return HdrHistogram.decode(payload.strip())


def merge(histograms: Sequence[HdrHistogram], ms_per_unit: Sequence[float] | None = None) -> HdrHistogram:
    """One microsecond histogram holding every sample of ``histograms`` (units converted when they differ)."""
    out = new_histogram()
    scales = list(ms_per_unit) if ms_per_unit is not None else [0.001] * len(histograms)
    for hist, scale in zip(histograms, scales, strict=True):
        if math.isclose(scale, 0.001) and hist.get_max_value() <= HIGHEST_US:
            out.add(hist)
            continue
        factor = scale * 1000.0  # units -> microseconds
        for item in hist.get_recorded_iterator():
            value = min(max(int(round(item.value_iterated_to * factor)), LOWEST_US), HIGHEST_US)
            out.record_value(value, item.count_at_value_iterated_to)
    return out


def value_ms(hist: HdrHistogram, percentile: float, ms_per_unit: float = 0.001) -> float:
    """The latency at ``percentile`` (0-100), in milliseconds."""
    return hist.get_value_at_percentile(percentile) * ms_per_unit


def percentile_curve(hist: HdrHistogram, ms_per_unit: float = 0.001, max_percentile: float = 99.999) -> pd.DataFrame:
    """The percentile distribution (``percentile``, ``value_ms``, ``x`` = 1/(1-p)) for the classic HDR plot.

    Points stop where the sample count can no longer resolve the tail (beyond
    1 - 1/N), ending at the maximum, so a curve never pretends to know a
    99.999th percentile from a thousand samples.
    """
    total = hist.get_total_count()
    if total == 0:
        return pd.DataFrame(columns=["percentile", "value_ms", "x"])
    limit = min(max_percentile, 100.0 * (1.0 - 1.0 / total)) if total > 1 else 0.0
    points: list[float] = []
    # Evenly spaced in log(1/(1-p)): 40 points per decade from 0% to the limit.
    top = 1.0 / (1.0 - limit / 100.0)
    steps = max(int(math.log10(top) * 40), 1)
    for i in range(steps + 1):
        x = 10 ** (math.log10(top) * i / steps)
        points.append(100.0 * (1.0 - 1.0 / x))
    rows = [(p, value_ms(hist, p, ms_per_unit), 1.0 / (1.0 - p / 100.0)) for p in points]
    rows.append((limit, hist.get_max_value() * ms_per_unit, 1.0 / (1.0 - limit / 100.0)))
    return pd.DataFrame(rows, columns=["percentile", "value_ms", "x"])


def summary_ms(hist: HdrHistogram, ms_per_unit: float = 0.001) -> dict[str, float]:
    """Count, mean, max and the standard percentiles of one histogram, in milliseconds."""
    out = {
        "count": float(hist.get_total_count()),
        "mean": hist.get_mean_value() * ms_per_unit,
        "max": hist.get_max_value() * ms_per_unit,
    }
    for p in (50, 90, 99, 99.9):
        out[f"p{p:g}"] = value_ms(hist, p, ms_per_unit)
    return out
