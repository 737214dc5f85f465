"""The fitted profiles reproduce the field report's tables (pure model, virtual clock),
and the model the fit uses is the one the running sim steps through."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from launcher.sim.engine import Engine, Seq
from launcher.sim.fit_profiles import FIT_ON
from launcher.sim.profile_fit import (
    FITTED,
    SEED_DIR,
    burst,
    criteria,
    load_excluded,
    load_table,
    output_lengths,
    predict,
    residual_table,
)
from launcher.sim.profiles import Profile, load_profile
from launcher.sim.timing import StepCost
from tests.conftest import REPO_ROOT

# Targets the shipped profiles do not meet yet: (profile, setting, metric, tolerance).
# Why, in fit-residuals.md and docs/sim.md: one prefill cost per prompt token cannot give
# vLLM's TTFT at both prompt lengths (held-out 256/256, N = 8-32). A listed target that
# starts to hold must leave this list: the test fails then too.
KNOWN_MISSES = {
    ("vllm-0.8.2-h20x8-r1-eager", 256, "ttft", 0.30),
}


@pytest.mark.parametrize("name", sorted(FITTED))
def test_fitted_profile_meets_the_targets_on_both_settings(name):
    rows = load_table(SEED_DIR / FITTED[name])
    # 11-12 burst sizes (N = 1..1024) for each of 128/128 and 256/256
    assert {r.input_len for r in rows} == {128, 256} and len(rows) >= 22
    table = residual_table(load_profile(name), rows, load_excluded(name)[0])
    checks = criteria(table)
    assert len(checks) == 10  # 5 criteria x 2 settings, the held-out one included
    missed = {(name, c.setting, c.metric, c.tolerance) for c in checks if not c.ok}
    known = {k for k in KNOWN_MISSES if k[0] == name}
    assert not missed - known, [c.describe() for c in checks if not c.ok]
    assert not known - missed, f"now met, remove from KNOWN_MISSES: {sorted(known - missed)}"


@pytest.mark.parametrize("name", sorted(FITTED))
def test_excluded_points_are_few_and_explained(name):
    excluded, reasons = load_excluded(name)
    assert len(reasons) == len(excluded)
    for (setting, _n), metrics in excluded.items():
        assert setting in (128, 256) and set(metrics) <= {"tpot", "tput", "ttft"}
    for metric in ("tpot", "tput", "ttft"):
        for setting in (128, 256):
            assert sum(1 for (s, _), ms in excluded.items() if s == setting and metric in ms) <= 2


def test_held_out_setting_is_reported_first():
    text = (REPO_ROOT / "launcher/sim/profiles/fit-residuals.md").read_text()
    for name in FITTED:
        part = text[text.index(f"## {name}"):]
        held, fitted = part.index("### Held out"), part.index(f"### Fitted: {FIT_ON}/{FIT_ON}")
        assert held < fitted
        assert "### The other way round" in part


def test_burst_reproduces_the_measured_mean_output_length():
    rows = load_table(SEED_DIR / FITTED["vllm-0.8.2-h20x8-r1-eager"])
    row = next(r for r in rows if r.concurrency == 1024 and r.input_len == 256)
    reqs = burst(row, 2.1)
    assert len(reqs) == 1024
    assert sum(r.output_len for r in reqs) / 1024 == pytest.approx(row.output_len, abs=0.001)
    assert max(r.output_len for r in reqs) == 256  # the requests that ran to max_tokens set the duration


@pytest.mark.parametrize("n,cap,mean", [(16, 128, 110.44), (8, 256, 200.88), (4, 256, 242.0), (3, 128, 128.0)])
def test_output_lengths_keep_mean_and_cap(n, cap, mean):
    lens = output_lengths(n, cap, mean, 2.1)
    assert len(lens) == n and sum(lens) == round(mean * n)
    assert all(1 <= x <= cap for x in lens)


def test_model_is_deterministic_and_monotone_in_load():
    profile = load_profile("sglang-h20x8-r1")
    rows = load_table(SEED_DIR / FITTED["sglang-h20x8-r1"])
    small = next(r for r in rows if r.concurrency == 1 and r.input_len == 128)
    big = next(r for r in rows if r.concurrency == 64 and r.input_len == 128)
    assert predict(profile, small) == predict(profile, small)
    assert predict(profile, big).tpot_ms > predict(profile, small).tpot_ms
    assert predict(profile, big).output_throughput > 10 * predict(profile, small).output_throughput


@pytest.mark.parametrize("name", sorted(FITTED))
def test_engine_step_is_the_timing_equation(name):
    """The server and the fit both call Engine.plan; its durations are StepCost's."""
    profile = load_profile(name)
    cost = StepCost(profile)
    engine = Engine(profile)
    for i in range(40):
        engine.submit(Seq(i, 100 + i, 50, 50))
    seen_prefill = seen_decode = False
    for _ in range(60):
        decoders = [s for s in engine.running if s.prefilled >= s.prefill_target]
        context = sum(s.prompt_len + s.generated for s in decoders)
        before = engine.prefill_tokens_total
        duration = engine.plan()
        prefilled = engine.prefill_tokens_total - before
        n_decode = 0 if prefilled and profile.schedule == "prefill-first" else len(decoders)
        assert duration == pytest.approx(cost.seconds(n_decode, context if n_decode else 0, prefilled))
        seen_prefill |= prefilled > 0
        seen_decode |= n_decode > 0
        engine.finish()
    assert seen_prefill and seen_decode


def test_graph_batch_sizes_pad_and_eager_beyond():
    p = Profile(name="g", base_ms=10.0, decode_seq_ms=1.0, prefill_token_ms=0.0, eager_step_ms=5.0,
                graph_batch_sizes=(1, 2, 4, 8, 16))
    cost = StepCost(p)
    assert cost.padded(3) == (4, True) and cost.padded(16) == (16, True) and cost.padded(17) == (17, False)
    assert cost.seconds(3, 0, 0) == pytest.approx((10 + 4) / 1000)  # padded to 4, graphed: no eager cost
    assert cost.seconds(17, 0, 0) == pytest.approx((10 + 17 + 5) / 1000)  # above the largest graph: eager
    assert cost.seconds(3, 0, 100) == pytest.approx((10 + 4 + 5) / 1000)  # a prefill step runs eagerly


def test_context_and_doubling_terms():
    p = Profile(name="c", base_ms=10.0, decode_seq_ms=0.0, prefill_token_ms=0.0, decode_ctx_ms=2.0,
                decode_doubling_ms=6.0, decode_knee=4.0)
    cost = StepCost(p)
    assert cost.seconds(4, 0, 0) == pytest.approx(0.010)
    assert cost.seconds(16, 0, 0) == pytest.approx(0.010 + 0.012)  # two doublings above the knee
    assert cost.seconds(16, 3000, 0) == pytest.approx(0.022 + 0.006)  # 2 ms per 1,000 KV tokens


def test_profile_json_round_trips_graph_sizes(tmp_path):
    profile = load_profile("sglang-h20x8-r1")
    path = tmp_path / "p.json"
    path.write_text(profile.to_json())
    again = load_profile(str(path))
    assert again == profile and isinstance(again.graph_batch_sizes, tuple)
    data = json.loads(profile.to_json())
    data["graph_batch_sizes"] = [0, 8]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="graph_batch_sizes"):
        load_profile(str(path))


def test_check_command_prints_criteria_and_exit_code():
    res = subprocess.run([sys.executable, "-m", "launcher.sim.fit_profiles", "--check"], capture_output=True,
                         text=True, timeout=300, cwd=REPO_ROOT)
    # exit code 1 while KNOWN_MISSES is not empty; every criterion is printed with its verdict
    assert res.returncode == (1 if KNOWN_MISSES else 0), res.stderr[-2000:]
    for name in FITTED:
        assert f"## {name}" in res.stdout
    assert res.stdout.count(" OK\n") + res.stdout.count(" FAIL\n") >= 20 + 10  # 2 tables + the reverse, x 2
    assert res.stdout.count(" FAIL\n") >= len(KNOWN_MISSES)
