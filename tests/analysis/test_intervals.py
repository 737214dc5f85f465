"""Repeated points: loadgen --repeat and --warmup-seconds, bootstrap intervals, and compare's verdicts."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import intervals
from analysis.compare import NOT_SUPPORTED, compare
from analysis.formats import normalize
from loadgen.store import read_requests
from tests.conftest import REPO_ROOT


def test_bootstrap_mean_is_seeded_and_needs_two_values():
    mean, lo, hi = intervals.bootstrap_mean([10.0, 12.0, 11.0, 9.0, 13.0])
    assert mean == 11.0 and 9.0 <= lo < mean < hi <= 13.0
    assert intervals.bootstrap_mean([10.0, 12.0, 11.0, 9.0, 13.0]) == (mean, lo, hi)
    one = intervals.bootstrap_mean([7.0, float("nan")])
    assert one[0] == 7.0 and math.isnan(one[1]) and math.isnan(one[2])
    assert intervals.separated((1, 2), (3, 4)) is True
    assert intervals.separated((1, 3), (2, 4)) is False
    assert intervals.separated((1, float("nan")), (2, 4)) is None


def synthetic(label: str, values: dict[int, list[float]]) -> pd.DataFrame:
    rows = []
    for conc, vs in values.items():
        for i, v in enumerate(vs):
            rows.append(normalize({
                "schema": "loadgen-result/1", "versions": {"loadgen": "0"}, "label": label, "random_input_len": 128,
                "random_output_len": 128, "max_concurrency": conc, "request_rate": "inf", "num_prompts": 100,
                "completed": 100, "mean_ttft_ms": v, "output_throughput": 1e5 / v, "ignore_eos": True,
                "repeat": {"index": i + 1, "of": len(vs)}}))
    return pd.DataFrame(rows)


def test_compare_states_a_difference_only_when_intervals_separate():
    a = synthetic("A", {1: [100, 101, 99, 100], 2: [200, 202, 198, 200]})
    noisy = synthetic("B", {1: [130, 60, 160, 120], 2: [260, 150, 330, 250]})
    comp = compare(a, noisy)
    ttft = [c for c in comp.conclusions if c.figure == "mean TTFT"]
    assert ttft and not any(c.supported for c in ttft)
    assert "not supported by the data" in comp.to_markdown()
    assert "95% CI" in comp.to_markdown()
    clear = synthetic("B", {1: [150, 151, 149, 150], 2: [300, 302, 298, 300]})
    comp2 = compare(a, clear)
    assert any(c.supported and c.figure == "mean TTFT" for c in comp2.conclusions)
    assert "not supported by the data" not in comp2.to_markdown()


def loadgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadgen.cli", *args], capture_output=True, text=True, timeout=180,
                          cwd=REPO_ROOT)


@pytest.mark.timeout(240)
def test_repeats_give_files_intervals_and_a_report(sim_server, fixed_profile, tmp_path, private_cache):
    from analysis.load import histograms, load
    from analysis.report import write_report

    fast = sim_server("--profile", str(fixed_profile), "--time-scale", "10")
    slow = sim_server("--profile", str(fixed_profile), "--time-scale", "5")
    for srv, label in ((fast, "fast"), (slow, "slow")):
        proc = loadgen("--base-url", srv.base_url, "--tokenizer", "deepseek-r1", "--input-len", "16",
                       "--output-len", "8", "--concurrency", "1,4", "--num-prompts", "8", "--repeat", "3",
                       "--output-dir", str(tmp_path / label), "--label", label, "--no-progress",
                       "--result-filename", "{label}-c{concurrency}-{repeat}.json")
        assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (tmp_path / "fast").glob("*.json"))
    assert names == [f"fast-c{c}-{k}.json" for c in (1, 4) for k in (1, 2, 3)]
    first = json.loads((tmp_path / "fast" / "fast-c4-2.json").read_text())
    assert first["repeat"] == {"index": 2, "of": 3} and first["server"]["time_scale"] == 10
    runs = load([tmp_path / "fast", tmp_path / "slow"])
    assert set(runs["repeat"]) == {1, 2, 3} and set(runs["time_scale"]) == {5.0, 10.0}
    report = write_report(runs, tmp_path / "report", histograms([tmp_path / "fast", tmp_path / "slow"]),
                          baseline="fast", draw=False)  # tables and conclusions: nothing here reads a figure
    table = pd.read_csv(report.summary_csv)
    assert "mean TPOT(ms) CI low" in table and table["repeats"].eq(3).all()
    assert (table["mean TPOT(ms) CI low"] <= table["mean TPOT(ms)"]).all()
    md = report.comparison_md.read_text()
    # a step of 10 ms against 20 ms: the TPOT intervals are far apart, so the conclusion stands, unless a
    # machine too busy for the client stretched the runs (and their intervals): the report then says so
    # beside the conclusion, which is all a busy machine's figures can give
    tpot = [c for comp in report.comparisons for c in comp.conclusions if c.figure == "mean TPOT"]
    assert tpot, md
    for c in tpot:
        if "client itself was saturated" not in c.reason:
            assert c.supported and not any(cav.startswith(NOT_SUPPORTED) for cav in c.caveats), md
    assert "95% CI" in md


@pytest.mark.timeout(120)
def test_warmup_seconds_leaves_the_first_seconds_out(sim_server, fixed_profile, tmp_path, private_cache):
    srv = sim_server("--profile", str(fixed_profile), "--time-scale", "10")
    proc = loadgen("--base-url", srv.base_url, "--tokenizer", "deepseek-r1", "--input-len", "16", "--output-len", "4",
                   "--rate", "20", "--arrival", "constant", "--duration", "2", "--warmup-seconds", "0.5",
                   "--output-dir", str(tmp_path), "--result-filename", "w.json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "w.json").read_text())
    rows = read_requests(tmp_path / "w.requests.npy")
    warm = rows[rows["warmup"]]
    steady = rows[~rows["warmup"]]
    # warm-up is what was sent in the first 0.5 s: a send comes at its intended time or later, so at most
    # the schedule's first 10, and all 10 unless the client fell behind (then the result says so)
    assert np.all(warm["sent_ms"] < 500) and np.all(steady["sent_ms"] >= 500)
    assert np.all(warm["intended_ms"] < 500) and 0 < len(warm) <= 10
    assert result["completed"] == len(steady) and result["warmup_requests"] == len(warm)
    if not result["client_saturated"]:
        assert len(warm) == 10 and len(steady) == 30, result["loop_lag_p99_ms"]
    assert result["warmup_seconds"] == 0.5
    assert result["request_throughput"] == pytest.approx(len(steady) / result["duration"])
    # the steady window, not the whole point: it starts when the warm-up ends, 0.5 s after the point's start,
    # and ends once the last answer is in (later than its last byte by however long the machine takes to
    # notice; 0.4 s of that still tells the window from the whole point)
    steady_to_last_byte = float(np.nanmax(rows["last_ms"])) / 1000.0 - 0.5
    assert steady_to_last_byte - 1e-3 <= result["duration"] < steady_to_last_byte + 0.4
