"""`loadgen compare`: the statistics on constructed data, the verdicts, and the CI command against real sims."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.regression import (
    BY_KEY,
    IMPROVEMENT,
    NO_CHANGE,
    REGRESSION,
    UNKNOWN,
    WITHIN,
    Requests,
    Side,
    estimate,
    judge,
)
from tests.conftest import REPO_ROOT


def side(latency_ms: np.ndarray, rate: float = 50.0, tokens: int = 32) -> Side:
    """A run of requests sent at a steady ``rate``, each with the given latency (all of them as E2EL,
    TTFT a tenth of it, TPOT from the rest)."""
    n = latency_ms.size
    sent = np.arange(n) * 1000.0 / rate
    values = {"e2el_ms": latency_ms, "ttft_ms": latency_ms / 10, "tpot_ms": latency_ms * 0.9 / (tokens - 1)}
    req = Requests(sent_ms=sent, end_ms=sent + latency_ms, values=values, tokens=np.full(n, float(tokens)),
                   span_s=float(sent[-1] + latency_ms[-1]) / 1000.0, good=latency_ms < np.median(latency_ms) * 2)
    return Side(requests=[req])


def drifting(seed: int, n: int = 2000) -> np.ndarray:
    """Latencies whose level wanders slowly (a queue that fills and drains): neighbours are correlated."""
    rng = np.random.default_rng(seed)
    level = np.repeat(rng.lognormal(0.0, 0.3, n // 100), 100)
    return 100.0 * level * rng.lognormal(0.0, 0.05, n)


def test_blocks_keep_correlation_that_request_by_request_resampling_would_hide():
    base, new = drifting(1), drifting(2)
    metric = BY_KEY["e2el_p99"]
    blocked = estimate(side(base), side(new), metric)
    # the same requests with their order shuffled: no correlation left in time, so blocks are as good as requests
    rng = np.random.default_rng(3)
    shuffled = estimate(side(rng.permutation(base)), side(rng.permutation(new)), metric)
    assert blocked.method.startswith("block bootstrap")
    assert blocked.change == pytest.approx(shuffled.change)
    assert (blocked.high - blocked.low) > 1.5 * (shuffled.high - shuffled.low)


def test_the_interval_holds_the_change_and_the_verdict_follows_the_threshold():
    rng = np.random.default_rng(0)
    base = 100.0 * rng.lognormal(0.0, 0.1, 3000)
    same = judge(side(base), side(base), [BY_KEY["e2el_p99"], BY_KEY["output_throughput"]], threshold=0.05)
    assert all(e.change == 0 and e.low <= 0 <= e.high and e.verdict == NO_CHANGE for e in same)

    slower = judge(side(base), side(base * 1.3), [BY_KEY["tpot_p50"], BY_KEY["ttft_p99"]], threshold=0.05)
    for e in slower:
        assert e.change == pytest.approx(0.3, rel=1e-3)
        assert 0 < e.low <= e.change <= e.high and e.verdict == REGRESSION
    faster = judge(side(base), side(base * 0.7), [BY_KEY["tpot_p50"]], threshold=0.05)
    assert faster[0].verdict == IMPROVEMENT
    # a real but small slowdown: the interval excludes zero, the change stays under the threshold
    small = judge(side(base), side(base * 1.02), [BY_KEY["tpot_p50"]], threshold=0.05)
    assert small[0].low > 0 and small[0].verdict == WITHIN
    # half the throughput (the same requests over twice the time) is a regression of a higher-is-better figure
    slow_rate = judge(side(base), side(base, rate=25.0), [BY_KEY["output_throughput"]], threshold=0.05)
    assert slow_rate[0].change == pytest.approx(-0.5, abs=0.01) and slow_rate[0].verdict == REGRESSION


def test_a_run_too_short_for_blocks_or_without_the_data_is_not_judged():
    short = side(np.full(20, 1000.0), rate=20.0)  # 1 s of sends, 1 s latencies: under five blocks of 2 × E2EL
    est = judge(short, short, [BY_KEY["ttft_p50"]], threshold=0.05)[0]
    assert est.verdict == UNKNOWN and "too short" in est.method
    # 500 requests leave 5 beyond the p99: a handful of requests, so no interval (the p50 has one)
    few = drifting(4, n=500)
    p99, p50 = judge(side(few), side(few), [BY_KEY["e2el_p99"], BY_KEY["ttft_p50"]], threshold=0.05)
    assert p99.verdict == UNKNOWN and "too few values for a p99 interval (500; 1,000" in p99.method
    assert p50.verdict == NO_CHANGE
    no_itl = judge(side(np.full(500, 10.0)), side(np.full(500, 10.0)), [BY_KEY["itl_p99"]], threshold=0.05)[0]
    assert no_itl.verdict == UNKNOWN and "no per-request data" in no_itl.method


def loadgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "loadgen"), *args], capture_output=True, text=True,
                          timeout=180, cwd=REPO_ROOT)


def vllm_result(folder: Path, p99_ttft: float, throughput: float, concurrency: int = 16) -> None:
    """A vLLM benchmark_serving --save-result file with figures only (no per-request lists)."""
    folder.mkdir(parents=True)
    (folder / f"serving_benchmark_{concurrency}_128_32.json").write_text(json.dumps({
        "date": "20250101-000000", "backend": "vllm", "model_id": "m", "tokenizer_id": "m", "num_prompts": 200,
        "request_rate": "inf", "max_concurrency": concurrency, "duration": 10.0, "completed": 200,
        "total_input_tokens": 25600, "total_output_tokens": 6400, "request_throughput": 20.0,
        "output_throughput": throughput, "total_token_throughput": throughput * 5,
        "mean_ttft_ms": p99_ttft / 2, "median_ttft_ms": p99_ttft / 2, "p99_ttft_ms": p99_ttft,
        "mean_tpot_ms": 5.0, "median_tpot_ms": 5.0, "p99_tpot_ms": 6.0, "mean_itl_ms": 5.0, "median_itl_ms": 5.0,
        "p99_itl_ms": 9.0}))


def test_repeats_on_both_sides_give_the_interval_and_too_few_are_not_judged(tmp_path):
    for k, (ttft, tput) in enumerate([(100, 640), (104, 650), (98, 630)]):
        vllm_result(tmp_path / "base" / f"r{k}", ttft, tput)
    for k, (ttft, tput) in enumerate([(150, 600), (155, 610), (148, 590)]):
        vllm_result(tmp_path / "new" / f"r{k}", ttft, tput)
    proc = loadgen("compare", str(tmp_path / "base"), str(tmp_path / "new"), "--metric", "ttft_p99",
                   "--format", "json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    ttft = next(m for m in data["points"][0]["metrics"] if m["metric"] == "ttft_p99")
    assert ttft["method"] == "repeats (3 vs 3)" and ttft["verdict"] == "regression" and ttft["ci_low"] > 0
    one = loadgen("compare", str(tmp_path / "base" / "r0"), str(tmp_path / "new" / "r0"), "--metric", "ttft_p99")
    assert one.returncode == 3, one.stdout + one.stderr
    assert "NOT JUDGED" in one.stdout


def test_runs_that_are_not_comparable_or_bad_options_are_one_line_and_exit_2(tmp_path):
    vllm_result(tmp_path / "base", 100, 640, concurrency=16)
    vllm_result(tmp_path / "new", 100, 640, concurrency=32)
    proc = loadgen("compare", str(tmp_path / "base"), str(tmp_path / "new"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "concurrency differs (base 16; new 32)" in proc.stderr
    for bad, said in ((["--threshold", "five"], "--threshold"), (["--metric", "ttft_p98"], "ttft_p98")):
        proc = loadgen("compare", str(tmp_path / "base"), str(tmp_path / "base"), *bad)
        assert proc.returncode == 2 and said in proc.stderr and proc.stderr.strip().count("\n") == 0
    proc = loadgen("compare", str(tmp_path / "base"), str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.timeout(240)
def test_the_gate_passes_identical_sims_and_fails_a_slowed_one(sim_server, fixed_profile, tmp_path, private_cache):
    # steps of 20 ms and 40 ms: long against a busy machine's scheduling delays, which make every step late
    fast = sim_server("--profile", str(fixed_profile), "--time-scale", "5")
    twin = sim_server("--profile", str(fixed_profile), "--time-scale", "5")
    slow = sim_server("--profile", str(fixed_profile), "--time-scale", "2.5")
    common = ["--tokenizer", "deepseek-r1", "--input-len", "16", "--output-len", "8", "--rate", "20",
              "--concurrency", "32", "--num-prompts", "80", "--no-progress", "--goodput", "e2el:1000"]
    for srv, name in ((fast, "base"), (twin, "twin"), (slow, "slow")):
        proc = loadgen("--base-url", srv.base_url, *common, "--output-dir", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
    # the same files on both sides: every change is zero and nothing regresses; 80 requests are too few
    # for a p99 interval, so those are not judged (exit 3) rather than judged on three requests
    same = loadgen("compare", str(tmp_path / "base"), str(tmp_path / "base"), "--format", "json")
    metrics = {m["metric"]: m for m in json.loads(same.stdout)["points"][0]["metrics"]}
    assert same.returncode == 3, same.stdout
    assert all(m["change"] == 0 for m in metrics.values() if m["change"] is not None)
    assert metrics["ttft_p50"]["verdict"] == "no detectable change"
    assert metrics["ttft_p99"]["verdict"] == "not judged" and "too few values" in metrics["ttft_p99"]["method"]
    p50s = loadgen("compare", str(tmp_path / "base"), str(tmp_path / "base"), "--metric", "ttft_p50,tpot_p50")
    assert p50s.returncode == 0 and p50s.stdout.startswith("**PASS**")
    # an identical sim: an open-loop rate far under capacity gives the same throughput on any machine
    twin = loadgen("compare", str(tmp_path / "base"), str(tmp_path / "twin"), "--metric", "output_throughput,goodput",
                   "--threshold", "20%")
    assert twin.returncode == 0, twin.stdout
    assert twin.stdout.startswith("**PASS**")
    # steps of 40 ms instead of 20: TPOT doubles; the gate fails with the markdown saying so
    slowed = loadgen("compare", str(tmp_path / "base"), str(tmp_path / "slow"), "--metric", "tpot_p50",
                     "--json", str(tmp_path / "verdict.json"))
    assert slowed.returncode == 1, slowed.stdout
    assert slowed.stdout.startswith("**FAIL**") and "| TPOT p50 (ms) |" in slowed.stdout
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    tpot = next(m for m in verdict["points"][0]["metrics"] if m["metric"] == "tpot_p50")
    assert tpot["verdict"] == "regression" and tpot["ci_low"] > 0.05 and tpot["method"].startswith("block")
    assert verdict["exit_code"] == 1 and verdict["gated"] == ["tpot_p50"]
