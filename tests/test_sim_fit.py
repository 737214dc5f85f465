"""The fitted profiles reproduce the field report's tables (pure model, virtual clock)."""

from __future__ import annotations

import pytest

from launcher.sim.fit import (
    FITTED,
    SEED_DIR,
    TOLERANCE,
    acceptance,
    burst,
    load_table,
    predict,
    residual_table,
)
from launcher.sim.profiles import load_profile


@pytest.mark.parametrize("name", sorted(FITTED))
def test_fitted_profile_matches_measured_table(name):
    rows = load_table(SEED_DIR / FITTED[name])
    # 11-12 burst sizes (N = 1..1024) for each of 128/128 and 256/256
    assert {r.input_len for r in rows} == {128, 256} and len(rows) >= 22
    table = residual_table(load_profile(name), rows)
    checks = acceptance(table)
    assert len(checks) == 4
    failures = [f"{c}: measured {m:.1f}, model {s:.1f} ({e:+.1%})" for c, m, s, e in checks if abs(e) > TOLERANCE]
    assert not failures, failures


def test_burst_reproduces_the_measured_mean_output_length():
    rows = load_table(SEED_DIR / FITTED["vllm-0.8.2-h20x8-r1-eager"])
    row = next(r for r in rows if r.concurrency == 1024 and r.input_len == 256)
    reqs = burst(row)
    assert len(reqs) == 1024
    assert sum(r.output_len for r in reqs) / 1024 == pytest.approx(row.output_len, abs=0.001)


def test_model_is_deterministic_and_monotone_in_load():
    profile = load_profile("sglang-h20x8-r1")
    rows = load_table(SEED_DIR / FITTED["sglang-h20x8-r1"])
    small = next(r for r in rows if r.concurrency == 1 and r.input_len == 128)
    big = next(r for r in rows if r.concurrency == 64 and r.input_len == 128)
    assert predict(profile, small) == predict(profile, small)
    assert predict(profile, big).tpot_ms > predict(profile, small).tpot_ms
    assert predict(profile, big).output_throughput > 10 * predict(profile, small).output_throughput
