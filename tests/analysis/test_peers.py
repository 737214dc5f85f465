"""AIPerf and guidellm results load beside ours, and `loadgen compare` judges them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import analysis


def aiperf_request(i: int, start_ns: int, ttft_ms: float, gaps_ms: list[float], error: bool = False) -> dict:
    """One line of AIPerf's profile_export.jsonl."""
    latency = ttft_ms + sum(gaps_ms)
    meta = {"session_num": i, "x_request_id": f"r{i}", "turn_index": 0, "request_start_ns": start_ns,
            "request_ack_ns": start_ns + 1000, "request_end_ns": start_ns + int(latency * 1e6),
            "worker_id": "worker_0", "benchmark_phase": "profiling", "was_cancelled": False}
    if error:
        return {"metadata": meta, "metrics": {"error_isl": {"value": 128, "unit": "tokens"}},
                "error": {"code": 500, "type": "InternalServerError", "message": "boom"}}
    osl = len(gaps_ms) + 1
    return {"metadata": meta, "error": None, "metrics": {
        "input_sequence_length": {"value": 128, "unit": "tokens"},
        "time_to_first_token": {"value": ttft_ms, "unit": "ms"},
        "request_latency": {"value": latency, "unit": "ms"},
        "inter_chunk_latency": {"value": gaps_ms, "unit": "ms"},
        "inter_token_latency": {"value": sum(gaps_ms) / (osl - 1), "unit": "ms"},
        "output_sequence_length": {"value": osl, "unit": "tokens"}}}


def aiperf_run(folder: Path, ttft_ms: float, n: int = 400, with_aggregate: bool = True, seed: int = 0) -> list[dict]:
    """An AIPerf artifacts folder: per-request lines (n requests over ~n/40 s) and, optionally, the aggregate."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = [aiperf_request(i, 1_700_000_000_000_000_000 + i * 25_000_000, float(ttft_ms * rng.lognormal(0, 0.1)),
                            [float(5 * rng.lognormal(0, 0.05)) for _ in range(15)], error=(i == 7))
             for i in range(n)]
    (folder / "profile_export.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if with_aggregate:
        ok = [line for line in lines if line["error"] is None]
        ttfts = np.array([line["metrics"]["time_to_first_token"]["value"] for line in ok])
        lat_s = np.array([line["metrics"]["request_latency"]["value"] for line in ok]) / 1000
        (folder / "profile_export_aiperf.json").write_text(json.dumps({
            "request_throughput": {"unit": "requests/sec", "avg": len(ok) / (n / 40)},
            "request_latency": {"unit": "sec", "avg": float(lat_s.mean()), "p50": float(np.median(lat_s)),
                                "p99": float(np.percentile(lat_s, 99))},
            "time_to_first_token": {"unit": "ms", "avg": float(ttfts.mean()), "p50": float(np.median(ttfts)),
                                    "p90": float(np.percentile(ttfts, 90)), "p99": float(np.percentile(ttfts, 99))},
            "inter_token_latency": {"unit": "ms", "avg": 5.0, "p50": 5.0, "p99": 5.6},
            "output_token_throughput": {"unit": "tokens/sec", "avg": len(ok) * 16 / (n / 40)},
            "benchmark_duration": {"unit": "sec", "avg": n / 40},
            "request_count": {"unit": "requests", "avg": float(len(ok))},
            "error_request_count": {"unit": "requests", "avg": 1.0},
            "total_isl": {"unit": "tokens", "avg": 128.0 * len(ok)},
            "total_osl": {"unit": "tokens", "avg": 16.0 * len(ok)},
            "was_cancelled": False, "error_summary": [],
            "input_config": {"endpoint": {"model_names": ["m"], "type": "completions", "streaming": True},
                             "input": {"prompt": {"input_tokens": {"mean": 128}, "output_tokens": {"mean": 16}}},
                             "loadgen": {"concurrency": 8}}}))
    return lines


def guidellm_report(path: Path) -> None:
    """A guidellm benchmarks.json with two concurrent points."""
    def dist(mean: float, p99: float, total: float | None = None) -> dict:
        d = {"successful": {"mean": mean, "median": mean, "min": mean / 2, "max": p99 * 1.1, "std_dev": 1.0,
                            "percentiles": {"p50": mean, "p90": p99 * 0.9, "p95": p99 * 0.95, "p99": p99}}}
        if total is not None:
            d["successful"]["total_sum"] = total
        return d

    benches = [{"type_": "generative_benchmark", "start_time": 1000.0, "end_time": 1000.0 + 60 * streams / 4,
                "config": {"strategy": {"type_": "concurrent", "streams": streams}, "backend": {"model": "m"}},
                "metrics": {"request_totals": {"total": 200, "successful": 198, "errored": 2, "incomplete": 0},
                            "requests_per_second": dist(3.3 * streams, 4.0 * streams),
                            "output_tokens_per_second": dist(420.0 * streams, 500.0 * streams),
                            "time_to_first_token_ms": dist(40.0 * streams, 90.0 * streams),
                            "time_per_output_token_ms": dist(6.0, 8.0),
                            "inter_token_latency_ms": dist(6.1, 9.0),
                            "request_latency": dist(0.8, 1.5),
                            "prompt_token_count": dist(256.0, 256.0, 256.0 * 198),
                            "output_token_count": dist(128.0, 128.0, 128.0 * 198)}}
               for streams in (4, 8)]
    path.write_text(json.dumps({"metadata": {"guidellm_version": "0.3.0"},
                                "args": {"data": ["prompt_tokens=256,output_tokens=128"], "model": "m"},
                                "benchmarks": benches}))


def test_aiperf_aggregate_with_its_requests_is_one_run(tmp_path):
    lines = aiperf_run(tmp_path / "aiperf", ttft_ms=50)
    skipped = []
    runs = analysis.load(tmp_path, skipped=skipped)
    assert len(runs) == 1 and not skipped
    run = runs.iloc[0]
    assert run["format"] == "aiperf" and run["concurrency"] == 8 and run["input_len"] == 128
    assert run["output_len"] == 16 and run["completed"] == 399 and run["failed"] == 1
    ok = [line["metrics"]["time_to_first_token"]["value"] for line in lines if line["error"] is None]
    assert run["p99_ttft_ms"] == pytest.approx(np.percentile(ok, 99))
    assert run["p99_e2el_ms"] > 50  # seconds in the file, milliseconds in the row
    reqs = analysis.requests(tmp_path)
    assert len(reqs) == 400 and reqs["ok"].sum() == 399
    assert reqs["sent_ms"].iloc[1] == pytest.approx(25.0) and len(reqs["itls_ms"].iloc[0]) == 15


def test_aiperf_requests_alone_are_a_run_with_figures_computed(tmp_path):
    lines = aiperf_run(tmp_path / "only", ttft_ms=50, with_aggregate=False)
    run = analysis.load(tmp_path).iloc[0]
    ok = [line["metrics"]["time_to_first_token"]["value"] for line in lines if line["error"] is None]
    assert run["format"] == "aiperf" and run["completed"] == 399
    assert run["p50_ttft_ms"] == pytest.approx(np.percentile(ok, 50))
    assert run["output_throughput"] == pytest.approx(399 * 16 / run["duration"])


def test_guidellm_report_gives_one_run_per_benchmark(tmp_path):
    guidellm_report(tmp_path / "benchmarks.json")
    runs = analysis.load(tmp_path)
    assert list(runs["concurrency"]) == [4, 8] and set(runs["format"]) == {"guidellm"}
    first = runs.iloc[0]
    assert first["p99_ttft_ms"] == 360.0 and first["p99_e2el_ms"] == 1500.0 and first["mean_tpot_ms"] == 6.0
    assert first["output_throughput"] == 1680.0 and first["input_len"] == 256 and first["output_len"] == 128
    assert first["completed"] == 198 and first["failed"] == 2 and first["duration"] == 60.0


def test_compare_judges_aiperf_runs_from_their_requests(tmp_path):
    aiperf_run(tmp_path / "base", ttft_ms=50, seed=1)
    aiperf_run(tmp_path / "new", ttft_ms=80, seed=2)
    proc = subprocess.run([str(Path(sys.executable).parent / "loadgen"), "compare", str(tmp_path / "base"),
                           str(tmp_path / "new"), "--metric", "ttft_p50", "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    metric = json.loads(proc.stdout)["points"][0]["metrics"][0]
    assert metric["verdict"] == "regression" and metric["method"].startswith("block bootstrap")
    assert 0.4 < metric["change"] < 0.8
