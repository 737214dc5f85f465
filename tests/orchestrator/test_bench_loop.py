"""``make bench``'s entry point: the sweep plan, and the whole loop on the fast sim (run, report, resume)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from launcher.sim.profiles import ProfileError, load_profile
from orchestrator.bench import (
    REPORT_CONCURRENCY,
    EngineTarget,
    loadgen_argv,
    plan_points,
    steady_prompts,
    targets_for,
)
from tests.conftest import REPO_ROOT


def test_report_grid_is_the_field_reports_measured_properly():
    points = plan_points("report")
    assert len(points) == 24
    assert {(p.input_len, p.output_len) for p in points} == {(128, 128), (256, 256)}
    assert [p.concurrency for p in points[:12]] == [1, 2, 4, 8, 16, 32, 64, 128, 200, 256, 512, 1024]
    for p in points:
        assert p.num_prompts == max(4 * p.concurrency, 32)
        assert p.warmup == p.concurrency
    assert points[0].filename == "serving_benchmark_1_128_128.json"
    assert points[-1].filename == "serving_benchmark_1024_256_256.json"


def test_like_report_is_one_burst_per_point():
    for p in plan_points("report", like_report=True):
        assert p.num_prompts == p.concurrency and p.warmup == 0
    assert tuple(p.concurrency for p in plan_points("report", like_report=True)[:12]) == REPORT_CONCURRENCY


def test_like_report_handles_eos_as_each_reports_client_did(tmp_path):
    point = plan_points("report", like_report=True)[0]
    targets = [
        EngineTarget("sim", "v", profile="vllm-0.8.2-h20x8-r1-eager"), EngineTarget("sim", "s", profile="sglang-h20x8-r1"),
        EngineTarget("vllm", "real-v"), EngineTarget("sglang", "real-s"),
    ]
    flags = {t.label: loadgen_argv(point, "http://127.0.0.1:1", t, tmp_path, True, "openai", "deepseek-r1", "report")
             for t in targets}
    assert "--no-ignore-eos" in flags["v"] and "--no-ignore-eos" in flags["real-v"]
    assert "--ignore-eos" in flags["s"] and "--ignore-eos" in flags["real-s"]
    steady = loadgen_argv(point, "http://127.0.0.1:1", targets[0], tmp_path, False, "openai", "deepseek-r1", "report")
    assert "--ignore-eos" in steady
    assert steady[steady.index("--result-filename") + 1] == "serving_benchmark_1_128_128.json"


def test_default_sim_targets_are_both_fitted_profiles_vllm_first():
    targets = targets_for("sim", None, None, None, like_report=False)
    assert len(targets) == 2
    assert "vllm" in targets[0].profile and "sglang" in targets[1].profile
    assert [t.label for t in targets] == [f"sim-{t.profile}" for t in targets]  # dotted versions kept whole
    assert targets[0].metadata["enforce_eager"] == "true" and targets[1].metadata["enforce_eager"] == "false"
    assert [t.metadata["tensor_parallel_size"] for t in targets] == ["8", "8"]  # the GPUs a cost is per
    assert [t.label for t in targets_for("sim", "fast", None, None, like_report=True)] == ["sim-fast-like-report"]


def test_sim_launch_facts_come_from_the_profiles_engine_args_not_its_prose(tmp_path):
    vllm, sglang = (t.metadata for t in targets_for("sim", None, None, None, like_report=False))
    assert (vllm["mem_fraction_static"], vllm["context_length"], vllm["max_num_seqs"]) == ("0.95", "4096", "256")
    assert vllm["enable_chunked_prefill"] == "False"  # as the report typed it
    assert (sglang["mem_fraction_static"], sglang["context_length"], sglang["enable_chunked_prefill"]) == (
        "0.90", "65536", "4096")
    profile = tmp_path / "mine.json"
    profile.write_text(json.dumps({
        "description": "says --enforce-eager --mem-fraction-static 0.5 in prose only",
        "base_ms": 1.0, "decode_seq_ms": 0.1, "prefill_token_ms": 0.01, "max_num_seqs": 64,
        "engine_args": ["--tp", "4", "--context-length=8192"],
    }), encoding="utf-8")
    meta = targets_for("sim", str(profile), None, None, like_report=False)[0].metadata
    assert meta["tensor_parallel_size"] == "4" and meta["context_length"] == "8192"
    assert meta["max_num_seqs"] == "64"  # the flags are silent: the profile's own limit
    assert "enforce_eager" not in meta and "mem_fraction_static" not in meta
    profile.write_text(json.dumps({"base_ms": 1.0, "decode_seq_ms": 0.1, "prefill_token_ms": 0.01,
                                   "engine_args": "--tp 4"}), encoding="utf-8")
    with pytest.raises(ProfileError, match="engine_args must be a list"):
        load_profile(str(profile))


def test_quick_sweep_reaches_past_one_wave():
    for p in plan_points("quick"):
        assert p.num_prompts >= 2 * p.concurrency
    assert steady_prompts(1, "quick") >= 8


def _bench(out: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "orchestrator.bench", "--engine", "sim", "--profile", "fast", "--sweep", "quick",
            "--concurrency", "1,4", "--lengths", "32x16", "--out", str(out), *extra]
    env = dict(os.environ)
    return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_bench_runs_reports_and_resumes(tmp_path):
    out = tmp_path / "bench"
    first = _bench(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = out / "sim-fast"
    names = sorted(p.name for p in results.glob("serving_benchmark_*.json"))
    assert names == ["serving_benchmark_1_32_16.json", "serving_benchmark_4_32_16.json"]
    data = json.loads((results / "serving_benchmark_4_32_16.json").read_text())
    assert data["max_concurrency"] == 4 and data["num_prompts"] == 8 and data["ignore_eos"] is True
    assert data["label"] == "sim-fast" and data["metadata"]["profile"] == "fast"
    assert data["completed"] == 8
    report = out / "report"
    summary = pd.read_csv(report / "summary.csv")
    assert sorted(summary["concurrency"]) == [1, 4]
    assert (summary["mean_output_len"] == 16).all()
    assert (report / "report.html").stat().st_size > 10_000
    assert (report / "plots" / "output_throughput.png").is_file()
    assert "server.log" in {p.name for p in results.iterdir()}

    # A re-run finds every point complete and does not start a server (its report: tables only).
    again = _bench(out, "--no-plots")
    assert again.returncode == 0
    assert "2 of 2 points already complete: skipped" in again.stdout
    assert "launching" not in again.stdout

    # An interrupted point (partial result) is redone, the complete one kept.
    partial = results / "serving_benchmark_4_32_16.json"
    partial.write_text(json.dumps({**data, "partial": True}))
    kept = (results / "serving_benchmark_1_32_16.json").stat().st_mtime_ns
    third = _bench(out, "--no-plots")
    assert third.returncode == 0, third.stdout[-3000:]
    assert "1 of 2 points already complete: skipped" in third.stdout
    assert json.loads(partial.read_text())["partial"] is False
    assert (results / "serving_benchmark_1_32_16.json").stat().st_mtime_ns == kept


@pytest.mark.timeout(120)
def test_sigterm_stops_the_server_and_leaves_a_resumable_sweep(tmp_path):
    argv = [sys.executable, "-m", "orchestrator.bench", "--profile", "fast", "--concurrency", "1,2,4,8",
            "--lengths", "32x16", "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bench = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = bench.stdout.readline()
            if not line:
                break
            if "ready at " in line:
                url = line.rsplit("ready at ", 1)[1].strip()
                break
        assert url, "the server never became ready"
        bench.send_signal(signal.SIGTERM)
        rest, _ = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()
    assert bench.returncode == 143, rest
    assert "terminated: the server is stopped" in rest
    host, port = url.removeprefix("http://").split(":")
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
    # What was cut short is redone by the next run: nothing counts as complete yet.
    dry = subprocess.run(argv + ["--dry-run"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert dry.stdout.count("to run") == 4


def test_bench_usage_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "orchestrator.bench", "--lengths", "128", "--out", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "INxOUT" in proc.stderr
    for bad in ("1,x", "0,4", "none"):
        proc = subprocess.run([sys.executable, "-m", "orchestrator.bench", "--concurrency", bad, "--dry-run",
                               "--out", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2 and "--concurrency" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "orchestrator.bench", "--profile", "nope", "--out", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "choose one of" in proc.stderr and "fast" in proc.stderr


def test_dry_run_lists_points_and_their_state(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "orchestrator.bench", "--profile", "fast", "--sweep", "report",
                           "--dry-run", "--out", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("to run") == 24
    assert "serving_benchmark_1024_256_256.json: 4096 prompts + 1024 warm-up" in proc.stdout


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_against_the_real_cpu_vllm(tmp_path):
    from launcher import vllm_cpu

    model = vllm_cpu.default_model_dir()
    if not (vllm_cpu.default_venv() / "bin" / "vllm").is_file() or not model.is_dir():
        pytest.skip("the CPU vLLM is not installed; run `make vllm-cpu`")
    argv = [sys.executable, "-m", "orchestrator.bench", "--engine", "vllm", "--model", str(model),
            "--concurrency", "1,4", "--lengths", "32x16", "--out", str(tmp_path)]
    env = dict(os.environ)
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=850, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = sorted(tmp_path.glob("vllm*/serving_benchmark_*_32_16.json"))
    assert [p.name for p in results] == ["serving_benchmark_1_32_16.json", "serving_benchmark_4_32_16.json"]
    data = json.loads(results[1].read_text())
    assert data["completed"] == 8 and data["ignore_eos"] is True
    assert data["metadata"]["engine"] == "vllm" and "--enforce-eager" in data["metadata"]["server_args"]
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert (summary["mean_output_len"] == 16).all()
