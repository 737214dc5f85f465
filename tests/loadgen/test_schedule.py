"""Arrival timelines: rate accuracy, shape of the gaps, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadgen.schedule import ArrivalSpec, offered_rate, release_offsets, requests_for_duration


@pytest.mark.parametrize("seed", range(5))
def test_poisson_10000_at_200_lands_within_1_percent(seed: int) -> None:
    offsets = release_offsets(10_000, ArrivalSpec(200.0, "poisson"), seed=seed)
    assert offsets[0] == 0.0
    assert np.all(np.diff(offsets) >= 0)
    assert abs(offered_rate(offsets) / 200.0 - 1.0) < 0.01


def test_poisson_gaps_are_exponential() -> None:
    gaps = np.diff(release_offsets(20_000, ArrivalSpec(100.0, "poisson"), seed=3))
    mean = gaps.mean()
    assert mean == pytest.approx(0.01, rel=0.01)
    # exponential: coefficient of variation 1, P(gap > mean) = e^-1
    assert gaps.std() / mean == pytest.approx(1.0, abs=0.05)
    assert np.mean(gaps > mean) == pytest.approx(math.exp(-1), abs=0.02)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_sets_the_spread(burstiness: float) -> None:
    gaps = np.diff(release_offsets(20_000, ArrivalSpec(50.0, "gamma", burstiness), seed=1))
    assert gaps.mean() == pytest.approx(1 / 50.0, rel=0.02)
    # gamma with shape k: CV = 1/sqrt(k)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.08)


def test_constant_is_exact() -> None:
    offsets = release_offsets(5, ArrivalSpec(4.0, "constant"))
    assert offsets.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_infinite_rate_releases_all_at_once() -> None:
    assert release_offsets(7, ArrivalSpec(math.inf, "poisson")).tolist() == [0.0] * 7


def test_same_seed_same_timeline_other_seed_other_timeline() -> None:
    spec = ArrivalSpec(10.0, "gamma", 0.5)
    a = release_offsets(100, spec, seed=42)
    assert np.array_equal(a, release_offsets(100, spec, seed=42))
    assert not np.array_equal(a, release_offsets(100, spec, seed=43))


@pytest.mark.parametrize(
    "kwargs",
    [dict(rate=0.0), dict(rate=-1.0), dict(rate=float("nan")), dict(process="uniform"), dict(burstiness=0.0)],
)
def test_bad_specs_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ArrivalSpec(**{"rate": 1.0, **kwargs})


def test_requests_for_duration() -> None:
    assert requests_for_duration(10.0, 2.5) == 25
    assert requests_for_duration(0.1, 1.0) == 1
    with pytest.raises(ValueError):
        requests_for_duration(10.0, math.inf)
