"""Two measurements of one point, one verdict per metric (``loadgen compare``, docs/compare.md).

For each metric the relative difference NEW/BASE − 1 gets a 95 % interval, from
one of two sources:

* **over repeats**, when both sides ran the point at least :data:`MIN_REPEATS`
  times (``loadgen --repeat K``): each run's figure is one sample; each side's mean
  is bootstrapped over its runs and the interval is taken on the ratio of the
  draws. Run-to-run variation (a busy machine, a warm cache) is then inside the
  interval, which is what a CI gate needs.
* **over requests, blocked in time**, from the per-request stores: the run is cut
  into consecutive blocks of at least two median end-to-end latencies (at most
  :data:`MAX_BLOCKS`), and whole blocks are drawn with replacement. Requests that
  overlap in time share a batch, a queue and a cache state, so their latencies
  are correlated; drawing them one by one would treat them as independent and
  give intervals that are too narrow. Drawing blocks keeps that correlation in
  every draw. A run with fewer than :data:`MIN_BLOCKS` blocks gets no interval, nor does a
  percentile with fewer than :data:`MIN_TAIL` values beyond it (a p99 needs 1,000).

Percentiles of a draw come from per-block histograms on a fine logarithmic grid
(:data:`BIN_WIDTH` relative width), so 2,000 draws cost a matrix product rather
than 2,000 sorts; the estimate itself is the exact percentile. Throughputs of a
draw are ratio estimators: the tokens (or good requests) of the drawn blocks over
their time.

A metric is a **regression** when the whole interval lies beyond the threshold on
the worse side — the data supports a change at least that large — and an
**improvement** likewise on the better side. When the interval excludes zero but
reaches inside the threshold, the change is real but not shown to matter:
**not beyond threshold**. When it holds zero: **no detectable change**. Requiring
the interval (not only the estimate) to clear the threshold is what keeps the
false-alarm rate low on a busy machine, where two runs of one configuration differ
by more than their within-run intervals say (``perf/compare.py``, docs/compare.md).
Everything here is a pure function of arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONFIDENCE = 0.95
N_BOOT = 2000
SEED = 0
MIN_BLOCKS = 5
MAX_BLOCKS = 40
MIN_REPEATS = 3
MIN_TAIL = 10  # values beyond a percentile needed to give it an interval (p99: 1,000 values)
BIN_WIDTH = 0.002  # relative width of a histogram bin: percentiles of a draw are off by at most half of it

REGRESSION = "regression"
IMPROVEMENT = "improvement"
WITHIN = "not beyond threshold"
NO_CHANGE = "no detectable change"
UNKNOWN = "not judged"


@dataclass(frozen=True)
class Metric:
    """A gated figure: a percentile of a per-request latency, or a rate over the run."""

    key: str
    title: str
    source: str  # per-request column ("ttft_ms", "itl", ...) or "tokens" / "good" for rates
    q: float | None  # percentile; None for a rate
    higher_is_better: bool
    run_figure: str  # the run-level figure used over repeats


METRICS: tuple[Metric, ...] = (
    Metric("ttft_p50", "TTFT p50 (ms)", "ttft_ms", 50, False, "p50_ttft_ms"),
    Metric("ttft_p99", "TTFT p99 (ms)", "ttft_ms", 99, False, "p99_ttft_ms"),
    Metric("tpot_p50", "TPOT p50 (ms)", "tpot_ms", 50, False, "p50_tpot_ms"),
    Metric("tpot_p99", "TPOT p99 (ms)", "tpot_ms", 99, False, "p99_tpot_ms"),
    Metric("itl_p99", "ITL p99 (ms)", "itl", 99, False, "p99_itl_ms"),
    Metric("e2el_p99", "E2EL p99 (ms)", "e2el_ms", 99, False, "p99_e2el_ms"),
    Metric("output_throughput", "output throughput (tok/s)", "tokens", None, True, "output_throughput"),
    Metric("goodput", "goodput (req/s)", "good", None, True, "request_goodput"),
)
BY_KEY = {m.key: m for m in METRICS}


@dataclass
class Requests:
    """One side's measured requests of a point (warm-up left out), in any order.

    ``sent_ms`` orders them in time and ``end_ms`` says when each ended (NaN: never);
    ``values`` holds per-request latencies (NaN where absent); ``itls`` each request's gaps when they were recorded; ``tokens`` the output
    tokens of successful requests (0 for failed); ``good`` whether a request met every
    goodput SLO (None: no SLO recorded); ``span_s`` the time the requests were measured
    over (the run's duration).
    """

    sent_ms: np.ndarray
    end_ms: np.ndarray
    values: dict[str, np.ndarray]
    tokens: np.ndarray
    span_s: float
    itls: list[np.ndarray] | None = None
    good: np.ndarray | None = None


@dataclass
class Side:
    """Everything known about one side of a point: its requests (pooled over its runs,
    each run cut into its own blocks) and each run's figures."""

    requests: list[Requests] = field(default_factory=list)
    run_figures: list[dict[str, float]] = field(default_factory=list)

    @property
    def repeats(self) -> int:
        return len(self.run_figures)


@dataclass(frozen=True)
class Estimate:
    """NEW against BASE for one metric: figures, relative change and its interval."""

    metric: Metric
    base: float
    new: float
    change: float  # NEW/BASE − 1; NaN when either figure is absent
    low: float  # interval of the change; NaN when there is none
    high: float
    method: str  # "repeats (K vs K)", "block bootstrap (B vs B blocks)", or why there is no interval
    verdict: str = UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return None if x is None or not math.isfinite(x) else round(float(x), 6)

        return {"metric": self.metric.key, "title": self.metric.title, "base": num(self.base), "new": num(self.new),
                "change": num(self.change), "ci_low": num(self.low), "ci_high": num(self.high),
                "method": self.method, "verdict": self.verdict,
                "higher_is_better": self.metric.higher_is_better}


# --- blocks --------------------------------------------------------------------------------------

def block_span_ms(req: Requests) -> float:
    """The time the blocks cover: from the first send to the run's end (or the last request's end)."""
    t0 = float(np.nanmin(req.sent_ms))
    last = float(np.nanmax(req.end_ms)) if np.isfinite(req.end_ms).any() else t0
    return max(req.span_s * 1000.0 - max(t0, 0.0), last - t0, 1e-9)


def block_ids(req: Requests) -> tuple[np.ndarray, int]:
    """Each request's block (by send time) and the number of blocks; 0 blocks when too few fit.

    A block lasts at least two median end-to-end latencies, so that the requests that
    shared a batch mostly fall in one block, and the run has at most MAX_BLOCKS.
    """
    n = req.sent_ms.size
    if n == 0:
        return np.zeros(0, np.int64), 0
    e2el = req.values.get("e2el_ms")
    med = float(np.nanmedian(e2el)) if e2el is not None and np.isfinite(e2el).any() else 0.0
    span_ms = block_span_ms(req)
    block_ms = max(2.0 * med, span_ms / MAX_BLOCKS)
    k = min(int(span_ms // block_ms), n)
    if k < MIN_BLOCKS:
        return np.zeros(n, np.int64), 0
    ids = np.clip(((req.sent_ms - np.nanmin(req.sent_ms)) / span_ms * k).astype(np.int64), 0, k - 1)
    return ids, k


def _draws(n_blocks: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot × n_blocks) counts: how often each block is drawn in each resample."""
    picks = rng.integers(0, n_blocks, size=(n_boot, n_blocks))
    counts = np.zeros((n_boot, n_blocks), np.float64)
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_blocks), picks.ravel()), 1.0)
    return counts


def _bins(values: np.ndarray, lo: float) -> np.ndarray:
    """Bin of each value on the log grid starting at ``lo`` (bin 0 holds values ≤ 0)."""
    out = np.zeros(values.size, np.int64)
    pos = values > 0
    out[pos] = 1 + np.floor(np.log(np.maximum(values[pos], lo) / lo) / math.log1p(BIN_WIDTH)).astype(np.int64)
    return out


def _bin_value(index: np.ndarray, lo: float) -> np.ndarray:
    return np.where(index == 0, 0.0, lo * np.exp((index - 0.5) * math.log1p(BIN_WIDTH)))


def _latencies(req: Requests, source: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(values, request index of each value) of a latency; None when the side lacks it."""
    if source == "itl":
        if req.itls is None:
            return None
        lens = np.fromiter((len(g) for g in req.itls), np.int64, len(req.itls))
        if not lens.sum():
            return None
        return np.concatenate([np.asarray(g, np.float64) for g in req.itls]), np.repeat(np.arange(lens.size), lens)
    col = req.values.get(source)
    if col is None:
        return None
    keep = np.isfinite(col)
    if not keep.any():
        return None
    return col[keep], np.flatnonzero(keep)


def _percentile_draws(parts: Sequence[tuple[np.ndarray, np.ndarray, int]], q: float, lo: float, n_boot: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Percentile ``q`` of each resample: every run's blocks drawn with replacement, pooled."""
    top = max(int(b.max()) for b, _, _ in parts) + 1
    hist = np.zeros((n_boot, top))
    for bins, blocks, k in parts:
        per_block = np.zeros((k, top))
        np.add.at(per_block, (blocks, bins), 1.0)
        hist += _draws(k, n_boot, rng) @ per_block
    cum = np.cumsum(hist, axis=1)
    target = cum[:, -1] * q / 100.0
    index = (cum < target[:, None] - 1e-9).sum(axis=1)
    return _bin_value(index, lo)


def spread(req: Requests, amount: np.ndarray, k: int) -> np.ndarray:
    """Each block's share of ``amount``: a request's amount spread evenly over its life (sent → end).

    Crediting a whole request to the block it started (or ended) in would make the
    blocks' rates jump with the waves of a closed loop, in which a batch of requests
    starts and ends together; spreading it follows the work as the server did it.
    """
    t0 = float(np.nanmin(req.sent_ms))
    width = block_span_ms(req) / k
    start = np.nan_to_num(req.sent_ms - t0, nan=0.0)
    end = np.maximum(np.nan_to_num(req.end_ms - t0, nan=0.0), start)
    edges = np.arange(k + 1) * width
    overlap = np.clip(np.minimum(end[:, None], edges[None, 1:]) - np.maximum(start[:, None], edges[None, :-1]),
                      0.0, None)
    life = end - start
    share = np.where(life[:, None] > 0, overlap / np.where(life > 0, life, 1.0)[:, None], 0.0)
    instant = life <= 0  # no measurable life: credit the block it started in
    if instant.any():
        cols = np.clip((start[instant] / width).astype(np.int64), 0, k - 1)
        share[np.flatnonzero(instant), cols] = 1.0
    return (share * amount[:, None]).sum(axis=0)


def _rate_draws(parts: Sequence[tuple[np.ndarray, int, float]], n_boot: int,
                rng: np.random.Generator) -> np.ndarray:
    """Rate of each resample: the drawn blocks' amounts over the drawn blocks' time."""
    amount = np.zeros(n_boot)
    time = np.zeros(n_boot)
    for per_block, k, span_s in parts:
        draws = _draws(k, n_boot, rng)
        amount += draws @ per_block
        time += draws.sum(axis=1) * (span_s / k)
    return amount / time


def _rate_source(req: Requests, source: str) -> np.ndarray | None:
    if source == "tokens":
        return req.tokens.astype(np.float64)
    return None if req.good is None else req.good.astype(np.float64)


def point_figure(side: Side, metric: Metric) -> float:
    """The side's figure over all its requests (exact percentile; rates over the summed spans)."""
    if metric.q is None:
        amounts = [_rate_source(r, metric.source) for r in side.requests]
        if not side.requests or any(a is None for a in amounts):
            return math.nan
        span = sum(r.span_s for r in side.requests)
        return float(sum(a.sum() for a in amounts if a is not None) / span) if span > 0 else math.nan
    vals = [v for r in side.requests if (v := _latencies(r, metric.source)) is not None]
    if not vals:
        return math.nan
    allv = np.concatenate([v for v, _ in vals])
    return float(np.percentile(allv, metric.q, method="inverted_cdf"))


def _block_draws(side: Side, metric: Metric, lo: float, n_boot: int,
                 rng: np.random.Generator) -> tuple[np.ndarray | None, int]:
    """The metric over ``n_boot`` block resamples of a side, and its number of blocks (None: no interval)."""
    parts: list[Any] = []
    total = 0
    for req in side.requests:
        ids, k = block_ids(req)
        data: Any = _rate_source(req, metric.source) if metric.q is None else _latencies(req, metric.source)
        if k == 0 or data is None:
            return None, 0
        if metric.q is None:
            parts.append((spread(req, data, k), k, block_span_ms(req) / 1000.0))
        else:
            parts.append((_bins(data[0], lo), ids[data[1]], k))
        total += k
    if not parts:
        return None, 0
    if metric.q is None:
        return _rate_draws(parts, n_boot, rng), total
    return _percentile_draws(parts, metric.q, lo, n_boot, rng), total


def _thin_tail(base: Side, new: Side, metric: Metric) -> str | None:
    """Why a percentile gets no interval from requests, or None.

    A percentile beyond which fewer than MIN_TAIL values lie is set by a handful of
    requests; resampling cannot show how much it would move in another run (a single
    stall of the machine decides it), so its interval would be too narrow.
    """
    if metric.q is None:
        return None
    count = min(sum(v[0].size for r in side.requests if (v := _latencies(r, metric.source)) is not None)
                for side in (base, new))
    tail = count * (1 - metric.q / 100.0)
    if tail >= MIN_TAIL:
        return None
    need = math.ceil(MIN_TAIL / (1 - metric.q / 100.0))
    return (f"too few values for a p{metric.q:g} interval ({count}; {need:,} give {MIN_TAIL} beyond it): "
            f"run more requests or --repeat")


def _positive_floor(sides: Sequence[Side], metric: Metric) -> float:
    """Start of the log grid: the smallest positive value either side measured."""
    lows = []
    for side in sides:
        for req in side.requests:
            found = _latencies(req, metric.source)
            if found is not None and (found[0] > 0).any():
                lows.append(float(found[0][found[0] > 0].min()))
    return min(lows) if lows else 1e-6


def _mean_draws(values: Sequence[float], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    x = np.asarray(values, np.float64)
    return x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)


def estimate(base: Side, new: Side, metric: Metric, n_boot: int = N_BOOT, seed: int = SEED,
             confidence: float = CONFIDENCE) -> Estimate:
    """NEW against BASE for one metric, with the interval from repeats or block resampling."""
    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    rep_b = [f[metric.run_figure] for f in base.run_figures if math.isfinite(f.get(metric.run_figure, math.nan))]
    rep_n = [f[metric.run_figure] for f in new.run_figures if math.isfinite(f.get(metric.run_figure, math.nan))]
    if len(rep_b) >= MIN_REPEATS and len(rep_n) >= MIN_REPEATS:
        b, n = float(np.mean(rep_b)), float(np.mean(rep_n))
        ratios = _mean_draws(rep_n, n_boot, rng) / _mean_draws(rep_b, n_boot, rng) - 1.0
        method = f"repeats ({len(rep_b)} vs {len(rep_n)})"
    else:
        b, n = point_figure(base, metric), point_figure(new, metric)
        if not (math.isfinite(b) and math.isfinite(n)):
            b = b if math.isfinite(b) else (float(np.mean(rep_b)) if rep_b else math.nan)
            n = n if math.isfinite(n) else (float(np.mean(rep_n)) if rep_n else math.nan)
            return Estimate(metric, b, n, _change(b, n), math.nan, math.nan,
                            "no per-request data for it on both sides (and fewer than "
                            f"{MIN_REPEATS} repeats)")
        short = _thin_tail(base, new, metric)
        if short is not None:
            return Estimate(metric, b, n, _change(b, n), math.nan, math.nan, short)
        lo = _positive_floor((base, new), metric)
        draws_b, kb = _block_draws(base, metric, lo, n_boot, rng)
        draws_n, kn = _block_draws(new, metric, lo, n_boot, rng)
        if draws_b is None or draws_n is None:
            return Estimate(metric, b, n, _change(b, n), math.nan, math.nan,
                            f"runs too short for a block bootstrap (fewer than {MIN_BLOCKS} blocks of "
                            "2 × median E2EL); run longer or --repeat")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = draws_n / draws_b - 1.0
        method = f"block bootstrap ({kb} vs {kn} blocks)"
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size < n_boot // 2 or not (b > 0 and math.isfinite(n)):
        return Estimate(metric, b, n, _change(b, n), math.nan, math.nan, f"{method}: the figure is zero or absent")
    low, high = np.quantile(ratios, [alpha, 1 - alpha])
    return Estimate(metric, b, n, _change(b, n), float(low), float(high), method)


def _change(b: float, n: float) -> float:
    return n / b - 1.0 if b and math.isfinite(b) and math.isfinite(n) and b > 0 else math.nan


def verdict(est: Estimate, threshold: float) -> str:
    """regression / improvement / not beyond threshold / no detectable change / not judged (module doc)."""
    if not (math.isfinite(est.low) and math.isfinite(est.high) and math.isfinite(est.change)):
        return UNKNOWN
    sign = 1.0 if est.metric.higher_is_better else -1.0  # >0: better
    lo, hi = sorted((sign * est.low, sign * est.high))
    if hi < -threshold:
        return REGRESSION
    if lo > threshold:
        return IMPROVEMENT
    if hi < 0 or lo > 0:
        return WITHIN
    return NO_CHANGE


def judge(base: Side, new: Side, metrics: Sequence[Metric], threshold: float, n_boot: int = N_BOOT,
          seed: int = SEED) -> list[Estimate]:
    """Every metric of one point, each with its verdict."""
    out = []
    for i, metric in enumerate(metrics):
        est = estimate(base, new, metric, n_boot=n_boot, seed=seed + i)
        out.append(Estimate(**{**est.__dict__, "verdict": verdict(est, threshold)}))
    return out
