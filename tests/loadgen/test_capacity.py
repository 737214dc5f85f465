"""The capacity search as pure functions: SLO parsing, judging a probe, bracket/bisect, the estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadgen.search.method import (
    Probe,
    SearchError,
    SearchSpec,
    bracket,
    estimate,
    evaluate,
    next_load,
    parse_slo,
    server_gone,
    status,
)
from loadgen.store import REQUEST_DTYPE


def test_parse_slo_forms():
    for text in ("ttft:p99<=2000", "ttft:p99=2000", "ttft:p99:2000", "TTFT:p99 <= 2000ms"):
        slo = parse_slo(text)
        assert (slo.metric, slo.stat, slo.limit_ms) == ("ttft", "p99", 2000.0)
    assert parse_slo("tpot:mean<=50").stat == "mean"
    assert parse_slo("e2el:median=8000").stat == "p50"
    assert parse_slo("tpot:p99.9<=50").stat == "p99.9"
    assert parse_slo("e2el<=8000").stat is None


@pytest.mark.parametrize("text", ["foo", "itl:p99<=5", "ttft:p99<=-1", "ttft:p0<=10", "ttft:p99<=abc", "ttft:p101=5"])
def test_parse_slo_rejects_with_one_line(text):
    with pytest.raises(SearchError) as err:
        parse_slo(text)
    assert "\n" not in str(err.value) and "--slo" in str(err.value)


def test_spec_checks():
    slo = parse_slo("ttft:p99<=100")
    with pytest.raises(SearchError, match="--over"):
        SearchSpec("qps", (slo,))
    with pytest.raises(SearchError, match="at least one --slo"):
        SearchSpec("rate", ())
    with pytest.raises(SearchError, match="no statistic"):
        SearchSpec("rate", (parse_slo("ttft<=100"),))
    SearchSpec("rate", (parse_slo("ttft<=100"),), goodput=0.95)  # a per-request limit for the goodput target
    with pytest.raises(SearchError, match="--start"):
        SearchSpec("rate", (slo,), start=5, low=10, high=100)
    with pytest.raises(SearchError, match="--min 1"):
        SearchSpec("concurrency", (slo,), start=1, low=0.5)


def rows(ttft_ms: list[float], *, warmup: list[bool] | None = None, ok: list[bool] | None = None,
         tokens: int = 11, tpot_ms: float = 10.0) -> np.ndarray:
    n = len(ttft_ms)
    r = np.zeros(n, REQUEST_DTYPE)
    r["intended_ms"] = r["sent_ms"] = np.arange(n, dtype=float) * 10
    r["first_ms"] = r["sent_ms"] + np.asarray(ttft_ms)
    r["last_ms"] = r["first_ms"] + tpot_ms * (tokens - 1)
    r["output_tokens"] = tokens
    r["ok"] = True if ok is None else ok
    r["warmup"] = False if warmup is None else warmup
    return r


def test_evaluate_percentile_over_steady_requests_only():
    spec = SearchSpec("rate", (parse_slo("ttft:p99<=100"), parse_slo("tpot:p50<=20")))
    # 10 slow warm-up requests, then 100 steady ones at 1..100 ms
    r = rows([5000.0] * 10 + list(np.arange(1, 101, dtype=float)), warmup=[True] * 10 + [False] * 100)
    probe = evaluate(r, spec, 5.0)
    assert probe.requests == 100
    assert probe.figures["ttft:p99"] == 99.0  # nearest rank
    assert probe.figures["tpot:p50"] == pytest.approx(10.0)
    assert probe.passed and probe.margin == pytest.approx(100 / 99)


def test_evaluate_counts_a_failed_request_as_infinitely_slow():
    spec = SearchSpec("rate", (parse_slo("ttft:p99<=100"),), max_error_rate=0.5)
    ok = [True] * 97 + [False] * 3
    probe = evaluate(rows([10.0] * 100, ok=ok), spec, 5.0)
    assert math.isinf(probe.figures["ttft:p99"])
    assert not probe.passed and probe.figures["error_rate"] == pytest.approx(0.03)
    strict = SearchSpec("rate", (parse_slo("ttft:p50<=100"),))  # p50 is fine, but 3 % errors > 1 %
    p2 = evaluate(rows([10.0] * 100, ok=ok), strict, 5.0)
    assert not p2.passed and any("error rate" in f for f in p2.failures)


def test_evaluate_goodput_target():
    spec = SearchSpec("rate", (parse_slo("ttft<=100"),), goodput=0.9)
    assert evaluate(rows([50.0] * 91 + [500.0] * 9), spec, 1.0).passed
    probe = evaluate(rows([50.0] * 85 + [500.0] * 15), spec, 1.0)
    assert not probe.passed and probe.figures["goodput"] == pytest.approx(0.85)


def test_evaluate_needs_enough_steady_requests():
    spec = SearchSpec("rate", (parse_slo("ttft:p99<=100"),))
    probe = evaluate(rows([1.0] * 5), spec, 1.0)
    assert not probe.passed and "lengthen --duration" in probe.failures[0]


def fake_server(capacity: float, limit: float = 100.0, noise: float = 0.0, seed: int = 0):
    """A server whose p99 TTFT is ``limit`` exactly at ``capacity`` and steeply worse above it."""
    rng = np.random.default_rng(seed)

    def probe(load: float) -> Probe:
        value = limit * (load / capacity) ** 4 * math.exp(noise * rng.standard_normal())
        return Probe(load, value <= limit, limit / value, {"ttft:p99": value}, 100)

    return probe


def search(spec: SearchSpec, server) -> list[Probe]:
    probes: list[Probe] = []
    for _ in range(200):
        load = next_load(spec, probes)
        if load is None:
            return probes
        probes.append(server(load))
    raise AssertionError("the search did not stop")


@pytest.mark.parametrize("true_capacity", [0.37, 3.0, 41.5, 777.0])
def test_rate_search_brackets_the_true_capacity_within_the_tolerance(true_capacity):
    spec = SearchSpec("rate", (parse_slo("ttft:p99<=100"),), start=1.0, tolerance=0.1, boundary_repeats=2)
    probes = search(spec, fake_server(true_capacity))
    lo, hi = bracket(probes)
    assert status(spec, probes) == "found"
    assert lo <= true_capacity < hi and hi / lo <= 1.1 + 1e-9
    est = estimate(spec, probes)
    assert est.capacity == lo
    assert est.ci_low <= true_capacity <= est.ci_high
    assert est.boundary == pytest.approx(true_capacity, rel=0.1)
    assert len(probes) <= spec.max_probes


def test_concurrency_search_ends_on_neighbouring_integers():
    spec = SearchSpec("concurrency", (parse_slo("ttft:p99<=100"),), start=1, low=1, high=4096, boundary_repeats=1)
    probes = search(spec, fake_server(37.4))
    assert all(float(p.load).is_integer() for p in probes)
    assert bracket(probes) == (37.0, 38.0) or bracket(probes)[1] / bracket(probes)[0] <= 1.1


def test_search_limits():
    spec = SearchSpec("rate", (parse_slo("ttft:p99<=100"),), start=1, low=0.1, high=50)
    below = search(spec, fake_server(0.01))
    assert status(spec, below) == "below_min" and bracket(below)[0] is None
    assert min(p.load for p in below) >= 0.1
    above = search(spec, fake_server(1e6))
    assert status(spec, above) == "above_max" and max(p.load for p in above) == 50
    capped = SearchSpec("rate", (parse_slo("ttft:p99<=100"),), start=1, tolerance=0.01, max_probes=5)
    assert status(capped, search(capped, fake_server(300))) == "max_probes"


def test_a_lucky_pass_at_the_bracket_end_is_caught_by_the_repeats():
    spec = SearchSpec("rate", (parse_slo("ttft:p99<=100"),), start=10, boundary_repeats=3)
    lucky: list[float] = []

    def server(load: float) -> Probe:
        # true capacity 20; the first probe just above it passes by luck, later ones do not
        if 20 < load <= 23 and not lucky:
            lucky.append(load)
            return Probe(load, True, 1.01, {}, 100)
        return fake_server(20.0)(load)

    probes = search(spec, server)
    lo, hi = bracket(probes)
    assert lucky and lo <= 20 < hi
    assert sum(1 for p in probes if p.load == lucky[0]) >= 2
    assert estimate(spec, probes).capacity <= 20


def test_noisy_probes_give_a_wider_interval_and_a_reproducible_one():
    spec = SearchSpec("rate", (parse_slo("ttft:p99<=100"),), start=1, boundary_repeats=5)
    quiet = estimate(spec, search(spec, fake_server(10.0, noise=0.0)))
    noisy_probes = search(spec, fake_server(10.0, noise=0.3, seed=1))
    noisy = estimate(spec, noisy_probes)
    assert noisy.ci_high - noisy.ci_low >= quiet.ci_high - quiet.ci_low
    again = estimate(spec, noisy_probes)
    assert (again.ci_low, again.ci_high) == (noisy.ci_low, noisy.ci_high)


def test_a_probe_whose_last_requests_could_not_connect_is_a_lost_server():
    r = rows([5.0] * 20, ok=[True] * 12 + [False] * 8)
    r["error"][12:] = b"connect"
    assert server_gone(r)
    r["error"][-1] = b"timeout"  # still answering, slowly: a verdict on the load, not a lost server
    assert not server_gone(r)
    blip = rows([5.0] * 20, ok=[True] * 5 + [False] * 5 + [True] * 10)
    blip["error"][5:10] = b"connect"  # refused for a moment, then answering again
    assert not server_gone(blip)
    assert not server_gone(rows([]))
