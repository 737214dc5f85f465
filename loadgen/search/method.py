"""Capacity under SLOs: the criteria, the bracket-then-bisect search, the estimate and its interval.

Everything here is a pure function of plain values, so the search can be checked
without a server (``tests/loadgen/test_capacity.py``); :mod:`loadgen.search.probes` runs the
probes and feeds their per-request rows back in.

The method, in short (``docs/capacity.md`` has the long form):

* a **probe** runs one load (a request rate, or a concurrency) for a fixed time;
  the requests released in its first seconds are warm-up and left out, so the
  criteria are judged on the steady state only (:func:`evaluate`);
* a probe **passes** when every SLO holds over its steady requests — a failed
  request counts as an infinitely slow one — and, with a goodput target, when
  enough requests met every limit;
* the **search** doubles (or halves) the load from ``start`` until one probe
  passes and a higher one fails, then bisects (geometrically) until the bracket is
  within the tolerance, then repeats the probes at both ends of the bracket
  (:func:`next_load`); a repeat that contradicts the bracket moves it and the
  bisection goes on;
* the **capacity** is the highest load at which every probe passed; the
  **boundary** (where the SLOs stop holding) is interpolated between neighbouring
  loads from each probe's margin, and its confidence interval is a bootstrap over
  the probes repeated at each load (:func:`estimate`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from loadgen.errors import LoadgenError

OVER = ("rate", "concurrency")
SLO_METRICS = ("ttft", "tpot", "e2el", "queue", "ttfa")
LOG_MARGIN_CLIP = 3.0  # margins beyond e^±3 (20×) say "far off" and nothing more
MIN_STEADY_REQUESTS = 10

_SLO = re.compile(
    r"^\s*(?P<metric>[a-z0-9]+)\s*(?::\s*(?P<stat>p\d+(?:\.\d+)?|mean|median))?\s*(?:<=|=|:|<)\s*(?P<limit>[0-9.eE+-]+)\s*(?:ms)?\s*$"
)


class SearchError(LoadgenError, ValueError):
    """A bad search specification; the message is one line with the fix."""


@dataclass(frozen=True)
class Slo:
    """One service-level objective: ``stat`` of ``metric`` over the steady requests ≤ ``limit_ms``.

    ``stat`` is ``pNN``, ``mean`` or ``None`` — a per-request limit that only the
    goodput target uses.
    """

    metric: str
    stat: str | None
    limit_ms: float

    @property
    def text(self) -> str:
        return f"{self.metric}{':' + self.stat if self.stat else ''}<={self.limit_ms:g}"

    @property
    def key(self) -> str:
        return f"{self.metric}:{self.stat}"


def parse_slo(text: str) -> Slo:
    """``ttft:p99<=2000`` (also ``ttft:p99=2000``, ``ttft:p99:2000``, ``tpot:mean<=50``, ``e2el<=8000``) → Slo."""
    m = _SLO.match(text.lower())
    if not m or m["metric"] not in SLO_METRICS:
        raise SearchError(
            f"--slo '{text}' is not METRIC:STAT<=MS with METRIC one of {', '.join(SLO_METRICS)} and STAT pNN or mean; "
            "give e.g. --slo ttft:p99=2000 --slo tpot:p99=50")
    try:
        limit = float(m["limit"])
    except ValueError:
        raise SearchError(f"--slo '{text}': '{m['limit']}' is not a number of milliseconds") from None
    if not (limit > 0 and math.isfinite(limit)):
        raise SearchError(f"--slo '{text}': the limit must be a positive number of milliseconds")
    stat = m["stat"]
    if stat == "median":
        stat = "p50"
    if stat and stat.startswith("p") and not 0 < float(stat[1:]) <= 100:
        raise SearchError(f"--slo '{text}': percentile {stat[1:]} is outside (0, 100]")
    return Slo(m["metric"], stat, limit)


@dataclass(frozen=True)
class SearchSpec:
    """What to search over, what must hold, and how finely."""

    over: str
    slos: tuple[Slo, ...]
    goodput: float | None = None  # fraction of steady requests that must meet every limit
    start: float = 1.0
    low: float = 0.01  # give up below this load (the server cannot meet the SLOs at all)
    high: float = 1e5  # and above this one (report "at least")
    tolerance: float = 0.1  # stop bisecting when high/low <= 1 + tolerance (concurrency: or high - low <= 1)
    boundary_repeats: int = 3  # probes at each end of the final bracket
    max_probes: int = 30
    max_error_rate: float = 0.01
    growth: float = 2.0

    def __post_init__(self) -> None:
        if self.over not in OVER:
            raise SearchError(f"--over '{self.over}' is unknown; use rate or concurrency")
        if not self.slos:
            raise SearchError("give at least one --slo, e.g. --slo ttft:p99=2000 --slo tpot:p99=50")
        if self.goodput is None and any(s.stat is None for s in self.slos):
            bad = next(s for s in self.slos if s.stat is None)
            raise SearchError(f"--slo {bad.text} has no statistic; write {bad.metric}:p99<={bad.limit_ms:g}, "
                              "or add --goodput-target 0.95 to use it as a per-request limit")
        if self.goodput is not None and not 0 < self.goodput <= 1:
            raise SearchError(f"--goodput-target must be a fraction in (0, 1], got {self.goodput}")
        if not 0 < self.low <= self.start <= self.high:
            raise SearchError(f"--start {self.start:g} must lie within --min {self.low:g} and --max {self.high:g}")
        if self.over == "concurrency" and self.low < 1:
            raise SearchError("concurrency starts at 1: give --min 1 or more")
        if not 0 < self.tolerance < 1:
            raise SearchError(f"--tolerance must be a fraction in (0, 1), e.g. 0.1 for 10 %, got {self.tolerance}")
        if self.boundary_repeats < 1:
            raise SearchError(f"--boundary-repeats must be >= 1, got {self.boundary_repeats}")
        if self.max_probes < 2:
            raise SearchError(f"--max-probes must be >= 2, got {self.max_probes}")
        if not 0 <= self.max_error_rate < 1:
            raise SearchError(f"--max-error-rate must be a fraction in [0, 1), got {self.max_error_rate}")
        if not self.growth > 1:
            raise SearchError(f"the bracketing growth factor must be > 1, got {self.growth}")

    def to_dict(self) -> dict[str, Any]:
        return {"over": self.over, "slos": [s.text for s in self.slos], "goodput_target": self.goodput,
                "start": self.start, "min": self.low, "max": self.high, "tolerance": self.tolerance,
                "boundary_repeats": self.boundary_repeats, "max_probes": self.max_probes,
                "max_error_rate": self.max_error_rate}


@dataclass
class Probe:
    """One probe's verdict on its steady-state requests."""

    load: float
    passed: bool
    margin: float  # min over the criteria of limit / value (goodput: fraction / target); >= 1 passes
    figures: dict[str, float]
    requests: int  # steady-state requests judged
    failures: tuple[str, ...] = ()  # the criteria that did not hold
    client_saturated: bool = False
    loop_lag_p99_ms: float | None = None
    file: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"load": self.load, "passed": self.passed, "margin": _finite(self.margin),
                "figures": {k: _finite(v) for k, v in self.figures.items()}, "requests": self.requests,
                "failures": list(self.failures), "client_saturated": self.client_saturated,
                "loop_lag_p99_ms": self.loop_lag_p99_ms, "file": self.file, "seconds": round(self.seconds, 3)}


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")


# ---------------------------------------------------------------- one probe


def per_request(rows: np.ndarray) -> dict[str, np.ndarray]:
    """Latencies (ms) of store rows (:data:`loadgen.store.REQUEST_DTYPE`); +inf for a failed request.

    A failed request never met any latency objective, so it counts as infinitely
    slow rather than being dropped (dropping failures flatters an overloaded server).
    """
    from loadgen.store import figures

    figs = figures(rows)
    ok = rows["ok"]
    out = {}
    for metric in SLO_METRICS:
        if f"{metric}_ms" not in figs:  # a store written before TTFA was recorded
            continue
        values = np.asarray(figs[f"{metric}_ms"], dtype=np.float64).copy()
        if metric == "ttfa":  # a request that never answered missed a TTFA objective
            values[ok & np.isnan(values)] = np.inf
        values[~ok] = np.inf
        out[metric] = values
    return out


def _stat(values: np.ndarray, stat: str) -> float:
    """Nearest-rank percentile (no interpolation across a failed request's +inf), or the mean."""
    values = values[~np.isnan(values)]  # e.g. TPOT of a one-token answer: undefined, not a miss
    if not values.size:
        return math.nan
    if stat == "mean":
        return float(values.mean())
    return float(np.percentile(values, float(stat[1:]), method="inverted_cdf"))


def evaluate(rows: np.ndarray, spec: SearchSpec, load: float) -> Probe:
    """Judge one probe from its per-request rows (warm-up rows are left out here)."""
    steady = rows[~rows["warmup"]]
    n = len(steady)
    figures: dict[str, float] = {"requests": float(n)}
    if n < MIN_STEADY_REQUESTS:
        return Probe(load, False, 0.0, figures, n,
                     (f"only {n} steady-state requests (need {MIN_STEADY_REQUESTS}): lengthen --duration",))
    lat = per_request(steady)
    margins: list[float] = []
    failures: list[str] = []
    error_rate = float((~steady["ok"]).mean())
    figures["error_rate"] = error_rate
    if error_rate > spec.max_error_rate:
        failures.append(f"error rate {error_rate:.1%} > {spec.max_error_rate:.1%}")
        margins.append(0.0)
    for slo in spec.slos:
        if slo.stat is None:
            continue
        value = _stat(lat[slo.metric], slo.stat)
        figures[slo.key] = value
        if math.isnan(value):
            continue
        margins.append(slo.limit_ms / value if value > 0 else math.inf)
        if not value <= slo.limit_ms:
            failures.append(f"{slo.metric} {slo.stat} {value:,.1f} ms > {slo.limit_ms:g} ms")
    if spec.goodput is not None:
        good = np.ones(n, dtype=bool)
        for slo in spec.slos:
            v = lat[slo.metric]
            good &= np.isnan(v) | (v <= slo.limit_ms)
        good &= steady["ok"]
        frac = float(good.mean())
        figures["goodput"] = frac
        margins.append(frac / spec.goodput)
        if frac < spec.goodput:
            failures.append(f"goodput {frac:.1%} < {spec.goodput:.0%}")
    margin = min(margins) if margins else math.inf
    return Probe(load, not failures, margin, figures, n, tuple(failures))


SERVER_GONE_ERRORS = (b"connect",)  # the server refused or never accepted the connection
SERVER_GONE_TAIL = 5


def server_gone(rows: np.ndarray) -> bool:
    """Whether a probe ended with the server no longer answering: its last requests sent
    (at least one, up to :data:`SERVER_GONE_TAIL`) all failed to connect.

    Such a probe measures the server's absence, not its capacity: judged as a
    failure, it would send the search down to loads the server was never tried at.
    """
    sent = rows[~np.isnan(rows["sent_ms"])] if len(rows) else rows
    if not len(sent):
        return False
    tail = sent[np.argsort(sent["sent_ms"], kind="stable")[-SERVER_GONE_TAIL:]]
    return bool(np.isin(tail["error"], SERVER_GONE_ERRORS).all())


# ---------------------------------------------------------------- the search


def _by_load(probes: Iterable[Probe]) -> dict[float, list[Probe]]:
    out: dict[float, list[Probe]] = {}
    for p in probes:
        out.setdefault(p.load, []).append(p)
    return out


def bracket(probes: Sequence[Probe]) -> tuple[float | None, float | None]:
    """(lo, hi): the highest load where every probe passed, and the lowest failing load above it.

    With no passing load, ``lo`` is None and ``hi`` the lowest failing load; with
    no failing load above ``lo``, ``hi`` is None.
    """
    groups = _by_load(probes)
    passing = [load for load, ps in groups.items() if all(p.passed for p in ps)]
    failing = sorted(load for load, ps in groups.items() if not all(p.passed for p in ps))
    if not passing:
        return None, (failing[0] if failing else None)
    # The top of the passing loads: a failure below it was noise, and the repeats at
    # the final bracket's ends are what catch a lucky pass (it then counts as failing).
    lo = max(passing)
    hi = next((f for f in failing if f > lo), None)
    return lo, hi


def converged(spec: SearchSpec, lo: float, hi: float) -> bool:
    if spec.over == "concurrency" and hi - lo <= 1:
        return True
    return hi / lo <= 1 + spec.tolerance + 1e-9


def _round(spec: SearchSpec, load: float) -> float:
    if spec.over == "concurrency":
        return float(max(1, round(load)))
    return float(f"{load:.4g}")


def next_load(spec: SearchSpec, probes: Sequence[Probe]) -> float | None:
    """The load of the next probe, or None when the search is over (see :func:`status`)."""
    if len(probes) >= spec.max_probes:
        return None
    if not probes:
        return _round(spec, spec.start)
    lo, hi = bracket(probes)
    groups = _by_load(probes)
    if lo is None:  # nothing passed yet: go down
        below = _round(spec, min(groups) / spec.growth)
        return below if below >= spec.low and below < min(groups) else None
    if hi is None:  # nothing failed above lo: go up
        if lo >= spec.high:
            return None
        return min(_round(spec, lo * spec.growth), _round(spec, spec.high))
    if not converged(spec, lo, hi):
        mid = _round(spec, math.sqrt(lo * hi))
        if spec.over == "concurrency" and not lo < mid < hi:
            mid = float(int((lo + hi) // 2))
        if lo < mid < hi:
            return mid
    for load in (lo, hi):
        if len(groups[load]) < spec.boundary_repeats:
            return load
    return None


def status(spec: SearchSpec, probes: Sequence[Probe]) -> str:
    """Why the search ended: found, below_min, above_max, max_probes — or running."""
    if len(probes) >= spec.max_probes and next_load(replace(spec, max_probes=len(probes) + 1), probes) is not None:
        return "max_probes"
    if next_load(spec, probes) is not None:
        return "running"
    lo, hi = bracket(probes)
    if lo is None:
        return "below_min"
    if hi is None:
        return "above_max"
    return "found"


# ---------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """The answer: a demonstrated capacity, and where the boundary lies with its interval."""

    over: str
    status: str
    capacity: float | None  # highest load at which every probe passed
    bracket: tuple[float | None, float | None]
    boundary: float | None  # interpolated load where the margin crosses 1
    ci_low: float | None
    ci_high: float | None
    confidence: float
    probes_at: dict[float, tuple[int, int]] = field(default_factory=dict)  # load -> (passed, run)
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"over": self.over, "status": self.status, "capacity": self.capacity,
                "bracket": list(self.bracket), "boundary": self.boundary,
                "interval": [self.ci_low, self.ci_high], "confidence": self.confidence,
                "probes_at": [{"load": k, "passed": v[0], "run": v[1]} for k, v in sorted(self.probes_at.items())],
                "method": self.method}


def _crossings(loads: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Per row of ``means`` (log margins at ``loads``): the load where the margin crosses 1.

    As for the bracket, the crossing lies above the highest load whose mean log
    margin is not negative, interpolated linearly in (log load, log margin) towards
    the next load; it is clamped to the probed range when every load passes or fails.
    """
    n = len(loads)
    ok = means >= 0
    any_ok = ok.any(axis=1)
    last = n - 1 - np.argmax(ok[:, ::-1], axis=1)
    out = np.where(any_ok, loads[last], loads[0]).astype(np.float64)
    inner = any_ok & (last < n - 1)
    if inner.any():
        rows = np.nonzero(inner)[0]
        j = last[rows]
        m1, m2 = means[rows, j], means[rows, j + 1]
        x1, x2 = np.log(loads[j]), np.log(loads[j + 1])
        frac = m1 / (m1 - m2)
        out[rows] = np.exp(x1 + (x2 - x1) * frac)
    return out


def estimate(spec: SearchSpec, probes: Sequence[Probe], confidence: float = 0.95, n_boot: int = 2000,
             seed: int = 0) -> Estimate:
    """Capacity, boundary and its bootstrap interval from every probe of a search.

    Each probe contributes its log margin (clipped to ±3). Per bootstrap draw, the
    probes at each load are resampled with replacement (a load probed once always
    gives its one value), the mean log margin per load is taken, and the crossing
    of zero is interpolated (:func:`_crossings`). The interval is the percentile
    interval of the draws widened to contain the final bracket: the draws carry the
    run-to-run noise (which is why the ends of the bracket are probed repeatedly),
    the bracket the search's resolution.
    """
    lo, hi = bracket(probes)
    groups = _by_load(probes)
    probes_at = {load: (sum(p.passed for p in ps), len(ps)) for load, ps in groups.items()}
    method = (f"bootstrap over repeated probes ({n_boot} draws, seed {seed}): per load the mean log "
              "SLO margin, crossing of 1 interpolated in log load; percentile interval, widened to the final bracket")
    if not probes:
        return Estimate(spec.over, "running", None, (None, None), None, None, None, confidence, {}, method)
    loads = np.array(sorted(groups), dtype=np.float64)
    samples = [np.clip(np.log(np.maximum([p.margin for p in groups[x]], 1e-300)), -LOG_MARGIN_CLIP, LOG_MARGIN_CLIP)
               for x in loads]
    point = _crossings(loads, np.array([[s.mean() for s in samples]]))[0]
    rng = np.random.default_rng(seed)
    means = np.empty((n_boot, len(loads)))
    for j, s in enumerate(samples):
        idx = rng.integers(0, len(s), size=(n_boot, len(s)))
        means[:, j] = s[idx].mean(axis=1)
    draws = _crossings(loads, means)
    alpha = (1 - confidence) / 2
    ci_low, ci_high = (float(x) for x in np.quantile(draws, [alpha, 1 - alpha]))
    # The interpolation knows nothing of what happens between two probed loads (a
    # queue can tip over anywhere in between), so the interval never claims more
    # than the final bracket: it spans the bracket and the bootstrap interval.
    if lo is not None:
        ci_low = min(ci_low, lo)
    if hi is not None:
        ci_high = max(ci_high, hi)
    return Estimate(spec.over, status(spec, probes), lo, (lo, hi), float(point), ci_low, ci_high, confidence,
                    probes_at, method)
