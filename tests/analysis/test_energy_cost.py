"""Energy per token from an advancing GPU energy counter, and dollars per million tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from analysis.cost import CostError, annotate, capacity_cost, per_million
from loadgen.telemetry.scrape import Tick
from loadgen.telemetry.timeline import energy
from tests.conftest import REPO_ROOT, serve_text

POWER_W = {"0": 300.0, "1": 200.0}


def tick(t_s: float, joules: dict[str, float]) -> Tick:
    return Tick(int(t_s * 1e9), {}, {}, None, {g: {"energy_j": j} for g, j in joules.items()})


def test_energy_is_the_counter_integrated_over_the_window():
    # 300 W and 200 W, read every second from t=0 to 4 s; the window is 0.5 s → 3.5 s
    ticks = [tick(t, {g: 1000.0 + p * t for g, p in POWER_W.items()}) for t in range(5)]
    assert energy(ticks, ["0", "1"], int(0.5e9), int(3.5e9)) == pytest.approx(500.0 * 3.0)
    # readings only inside part of the window: the mean power over what was covered, times the window
    inner = ticks[1:3]
    assert energy(inner, ["0", "1"], 0, int(4e9)) == pytest.approx(500.0 * 4.0)
    # a counter that went back (driver reload) gives no figure for that GPU, never a negative one
    reset = [tick(0, {"0": 500.0}), tick(1, {"0": 10.0}), tick(2, {"0": 310.0})]
    assert energy(reset, ["0"], 0, int(2e9)) is None
    assert energy(ticks[:1], ["0"], 0, int(1e9)) is None


@pytest.fixture
def advancing_dcgm() -> Iterator[str]:
    """A DCGM-exporter page on 127.0.0.1 whose energy counters (mJ) advance at POWER_W."""
    t0 = time.monotonic()

    def page(path: str) -> tuple[int, bytes]:
        elapsed = time.monotonic() - t0
        lines = ["# HELP DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION Total energy consumption since boot (in mJ).",
                 "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter"]
        lines += [f'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{gpu="{g}",modelName="NVIDIA H20"}} '
                  f"{int(5e9 + p * elapsed * 1000)}" for g, p in POWER_W.items()]
        lines += ["# TYPE DCGM_FI_DEV_POWER_USAGE gauge"]
        lines += [f'DCGM_FI_DEV_POWER_USAGE{{gpu="{g}"}} {p}' for g, p in POWER_W.items()]
        return 200, ("\n".join(lines) + "\n").encode()

    with serve_text(page) as root:
        yield f"{root}/metrics"


@pytest.mark.timeout(180)
def test_a_run_with_an_energy_counter_reports_joules_per_token_and_cost(sim_server, advancing_dcgm, tmp_path):
    srv = sim_server()
    proc = subprocess.run([sys.executable, "-m", "loadgen.cli", "--base-url", srv.base_url, "--tokenizer",
                           "deepseek-r1", "--input-len", "32", "--output-len", "64", "--rate", "20",
                           "--num-prompts", "40", "--goodput", "e2el:5000", "--metrics-interval", "0.1",
                           "--gpu-metrics", advancing_dcgm, "--no-progress", "--output-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=150, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    (path,) = (tmp_path / "runs").glob("*.json")
    result = json.loads(path.read_text())
    summ = result["gpu_metrics"]["summary"]
    # the counters advance at 500 W together; the slope between scrapes gives it back (scrape stamps jitter)
    assert summ["energy_mean_power_w"] == pytest.approx(500.0, rel=0.25)
    assert summ["energy_j"] == pytest.approx(summ["energy_mean_power_w"] * summ["energy_window_s"], rel=1e-3)
    assert "energy_j_mean" not in summ  # a counter has no meaningful mean

    report = subprocess.run([str(Path(sys.executable).parent / "loadgen-report"), str(tmp_path / "runs"), "--out",
                             str(tmp_path / "report"), "--gpu-hour-price", "2.5", "--no-plots"],
                            capture_output=True, text=True, timeout=150, cwd=REPO_ROOT)
    assert report.returncode == 0, report.stderr
    row = pd.read_csv(tmp_path / "report" / "summary.csv").iloc[0]
    tokens = result["total_output_tokens"]
    assert row["J/output token"] == pytest.approx(summ["energy_j"] / tokens, abs=0.006)
    assert row["GPUs"] == 2  # from the telemetry: the cost needs no --gpus
    assert row["$/M output tokens"] == pytest.approx(2.5 * 2 / 3600 / result["output_throughput"] * 1e6, abs=0.006)
    assert row["goodput/kW(req/s)"] == pytest.approx(result["request_goodput"] / (summ["energy_mean_power_w"] / 1000),
                                                     abs=0.006)
    assert "J/output token" in (tmp_path / "report" / "report.html").read_text()


def test_cost_per_million_tokens_and_its_one_line_errors(tmp_path):
    # $2/GPU-hour on 8 GPUs at 4,000 tokens/s: 16 $/h over 14.4 M tokens/h
    assert per_million(2.0, 8, 4000.0) == pytest.approx(16 / 14.4)
    runs = pd.DataFrame({"label": ["a"], "output_throughput": [4000.0], "total_token_throughput": [8000.0],
                         "engine_tensor_parallel": [8]})
    out = annotate(runs, 2.0)
    assert out["usd_per_m_output_tokens"][0] == pytest.approx(16 / 14.4)
    assert out["usd_per_m_total_tokens"][0] == pytest.approx(16 / 28.8)
    with pytest.raises(CostError, match="pass --gpus N"):
        annotate(runs.drop(columns=["engine_tensor_parallel"]), 2.0)
    with pytest.raises(CostError, match="positive price"):
        annotate(runs, 0.0)
    table = pd.DataFrame({"label": ["a", "b"], "over": ["rate", "concurrency"], "capacity": [10.0, 64.0],
                          "output_len": [400, 400]})
    at_slo = capacity_cost(table, 2.0, 8)["$/M output tokens at SLO"]
    assert at_slo[0] == pytest.approx(16 / 14.4) and at_slo.isna()[1]
    # without --gpus: each record's launch plan (its tensor parallel size), or a one-line refusal
    assert capacity_cost(table.assign(gpus=[8, 8]), 2.0)["$/M output tokens at SLO"][0] == pytest.approx(16 / 14.4)
    with pytest.raises(CostError, match="pass --gpus N"):
        capacity_cost(table.assign(gpus=[8, None]), 2.0)


def test_report_without_a_gpu_count_says_pass_gpus(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "serving_benchmark_16_128_32.json").write_text(json.dumps({
        "date": "20250101-000000", "backend": "vllm", "model_id": "m", "num_prompts": 10, "completed": 10,
        "duration": 1.0, "output_throughput": 320.0, "mean_ttft_ms": 10.0}))
    for extra, said in ((["--gpu-hour-price", "2"], "pass --gpus N"), (["--gpus", "2"], "--gpu-hour-price")):
        proc = subprocess.run([str(Path(sys.executable).parent / "loadgen-report"), str(folder), "--out",
                               str(tmp_path / "r"), *extra], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and said in proc.stderr and proc.stderr.strip().count("\n") == 0
