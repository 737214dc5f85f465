"""When each request is released: the whole timeline, computed up front from a seed.

The runner releases request ``i`` at ``start + offsets[i]`` (absolute targets), so
nothing here depends on how long sending takes and no drift accumulates.

Arrival processes (all with mean rate ``rate``):

* ``poisson``  — exponential gaps (gamma with shape 1);
* ``gamma``    — gamma gaps with shape ``burstiness``: < 1 is burstier than Poisson,
  > 1 smoother, very large tends to constant (vLLM's ``--burstiness``);
* ``constant`` — every ``1/rate`` seconds.

``rate = inf`` releases everything at once (the concurrency gate then paces).

The gaps are drawn from the process and then scaled so that ``n`` gaps span exactly
``n / rate``. For Poisson that is precisely the process conditioned on its n-th arrival
time (the spacings of uniform order statistics); for gamma it keeps the gap shape.
Without it a 10,000-request Poisson run at 200 req/s would miss the asked rate by
about 1 % (one standard deviation) half the time — the scaling makes every run
offer the rate that was asked, which is what a sweep point is supposed to mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ARRIVALS = ("poisson", "gamma", "constant")


@dataclass(frozen=True)
class ArrivalSpec:
    """How requests arrive: rate in requests/s (``math.inf`` for all at once)."""

    rate: float = math.inf
    process: str = "poisson"
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        if not (self.rate > 0):  # also rejects NaN
            raise ValueError(f"rate must be > 0 or inf, got {self.rate}")
        if self.process not in ARRIVALS:
            raise ValueError(f"arrival process must be one of {', '.join(ARRIVALS)}, got {self.process!r}")
        if not (self.burstiness > 0) or math.isinf(self.burstiness):
            raise ValueError(f"burstiness must be a finite number > 0, got {self.burstiness}")


def release_offsets(n: int, spec: ArrivalSpec, seed: int = 0) -> np.ndarray:
    """Release times in seconds from the start, non-decreasing, ``offsets[0] == 0``.

    Deterministic in ``(n, spec, seed)``: the same command replays the same timeline.
    """
    if n < 0:
        raise ValueError(f"number of requests must be >= 0, got {n}")
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    if math.isinf(spec.rate):
        return np.zeros(n, dtype=np.float64)
    mean_gap = 1.0 / spec.rate
    if spec.process == "constant":
        return np.arange(n, dtype=np.float64) * mean_gap
    shape = 1.0 if spec.process == "poisson" else spec.burstiness
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape, mean_gap / shape, size=n)
    total = float(gaps.sum())
    if total > 0:
        gaps *= (n * mean_gap) / total
    # The first request goes at t=0; gap i separates request i from i+1 and the last
    # gap is the quiet time after the final release (it keeps the span at n/rate).
    offsets = np.empty(n, dtype=np.float64)
    offsets[0] = 0.0
    np.cumsum(gaps[:-1], out=offsets[1:])
    return offsets


def requests_for_duration(duration_s: float, rate: float) -> int:
    """How many arrivals a finite rate offers in ``duration_s`` (at least one)."""
    if math.isinf(rate):
        raise ValueError("an infinite rate offers no finite count; pass --num-prompts")
    return max(1, math.ceil(duration_s * rate))


def offered_rate(offsets: np.ndarray) -> float:
    """The rate a timeline actually offers: (n - 1) arrivals over the span between first and last."""
    if len(offsets) < 2 or offsets[-1] <= offsets[0]:
        return math.inf
    return (len(offsets) - 1) / float(offsets[-1] - offsets[0])
