"""Result files from hand-built records: vLLM/SGLang keys, the HDR log, the per-request store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

from loadgen import hdr_record
from loadgen.config import ConfigError, RunConfig
from loadgen.point import PointFiles, finish_point, new_collector
from loadgen.records import RequestRecord
from loadgen.results import PointInfo, load_result, render_filename
from loadgen.store import StoreFiles, read_requests

MS = 1_000_000
T0 = 5 * 10**12

# Every key vLLM 0.8.x benchmark_serving.py --save-result writes (percentiles: ours default 50,90,95,99)
VLLM_KEYS = [
    "date", "backend", "model_id", "tokenizer_id", "num_prompts", "request_rate", "burstiness", "max_concurrency",
    "duration", "completed", "total_input_tokens", "total_output_tokens", "request_throughput", "request_goodput:",
    "output_throughput", "total_token_throughput", "input_lens", "output_lens", "ttfts", "itls", "errors",
] + [f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for s in ("mean", "median", "std", "p99")]
SGLANG_KEYS = [
    "backend", "dataset_name", "request_rate", "max_concurrency", "random_input_len", "random_output_len",
    "random_range_ratio", "duration", "completed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "input_throughput", "output_throughput", "mean_e2e_latency_ms", "median_e2e_latency_ms", "std_e2e_latency_ms",
    "p99_e2e_latency_ms", "mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms", "mean_tpot_ms",
    "median_tpot_ms", "std_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "median_itl_ms", "std_itl_ms", "p95_itl_ms",
    "p99_itl_ms", "concurrency",
]


def _records(n: int = 10) -> list[RequestRecord]:
    """Request i: sent at i*10 ms, TTFT 50 ms, then 4 tokens 20 ms apart; request 3 fails."""
    out = []
    for i in range(n):
        sent = T0 + i * 10 * MS
        r = RequestRecord(prompt_id=i, input_len=64, output_len=5, intended_ns=sent - MS, sent_ns=sent)
        if i == 3:
            r.error, r.status, r.error_detail = "http_500", 500, "boom"
        else:
            r.chunk_ns = [sent + 50 * MS + k * 20 * MS for k in range(5)]
            r.chunk_tokens = [1] * 5
            r.first_ns, r.last_ns = r.chunk_ns[0], r.chunk_ns[-1]
            r.output_tokens, r.output_tokens_source, r.server_prompt_tokens = 5, "usage", 64
            r.text = f"text {i}"
        out.append(r)
    return out


def _files(folder: Path) -> PointFiles:
    return PointFiles(folder / "r.json", folder / "r.hlog",
                      StoreFiles(folder / "r.requests.npy", folder / "r.chunks.npy", folder / "r.details.jsonl"))


def _write(cfg: RunConfig, files: PointFiles, records: list[RequestRecord], batch: int = 3) -> dict:
    """Records pushed and flushed in batches, as the runner does during a run."""
    info = PointInfo(concurrency=4, rate=20.0, date="20250101-000000", model="m", tokenizer_id="deepseek-r1",
                     start_epoch_s=1_700_000_000.0, end_epoch_s=1_700_000_001.0)
    collector = new_collector(cfg, files)
    collector.begin(T0)
    for i, r in enumerate(records):
        collector.push(r)
        if i % batch == batch - 1:
            collector.flush()
    finish_point(cfg, info, collector, T0, T0 + 1000 * MS, [MS] * 10, files, server_version="9.9", max_in_flight=4)
    return load_result(files.result)


CFG = dict(concurrencies=[4], rates=[20.0], percentiles=[50, 99, 99.9], goodput_slos_ms={"ttft": 60},
           save_requests=True, save_text=True, metadata={"gpu": "H20"}, label="t", input_len=64, output_len=5)


@pytest.fixture
def written(tmp_path: Path) -> tuple[dict, PointFiles, RunConfig]:
    cfg = RunConfig.from_flat(**CFG)
    files = _files(tmp_path)
    return _write(cfg, files, _records()), files, cfg


def test_result_has_vllm_and_sglang_keys(written: tuple[dict, PointFiles, RunConfig]) -> None:
    res, _, _ = written
    missing = [k for k in VLLM_KEYS + SGLANG_KEYS if k not in res]
    assert not missing, missing
    assert "p99.9_ttft_ms" in res and "p50_itl_ms" in res


def test_result_values(written: tuple[dict, PointFiles, RunConfig]) -> None:
    res, _, _ = written
    assert res["completed"] == 9 and res["failed"] == 1 and res["errors_by_kind"] == {"http_500": 1}
    assert res["num_prompts"] == 10 and res["request_rate"] == 20.0 and res["max_concurrency"] == 4
    assert res["duration"] == pytest.approx(1.0)
    assert res["mean_ttft_ms"] == pytest.approx(50.0) and res["p99_itl_ms"] == pytest.approx(20.0)
    assert res["mean_tpot_ms"] == pytest.approx(20.0) and res["mean_e2el_ms"] == pytest.approx(130.0)
    assert res["mean_queue_ms"] == pytest.approx(1.0) and res["mean_ttft_from_intended_ms"] == pytest.approx(51.0)
    assert res["request_goodput:"] == pytest.approx(9.0) and res["good_completed"] == 9
    assert res["total_output_tokens"] == 45 and res["input_throughput"] == pytest.approx(9 * 64)
    # per-request lists in prompt order, seconds, failures as zeros with their error
    assert res["ttfts"][0] == pytest.approx(0.05) and res["ttfts"][3] == 0
    assert res["itls"][0] == pytest.approx([0.02] * 4)
    assert res["errors"][3].startswith("http_500") and res["errors"][0] == ""
    assert res["output_lens"][3] == 0 and res["generated_texts"][0] == "text 0"
    assert res["concurrency"] == pytest.approx(9 * 0.13 / 1.0)  # SGLang: sum of E2EL / duration
    assert res["ignore_eos"] is True and res["partial"] is False and res["client_saturated"] is False
    assert res["gpu"] == "H20" and res["metadata"] == {"gpu": "H20"} and res["versions"]["server"] == "9.9"
    assert res["config"]["rates"] == [20.0] and res["config"]["api_key"] is None


def test_hlog_reads_back_with_hdr_tools(written: tuple[dict, PointFiles, RunConfig]) -> None:
    res, files, _ = written
    reader = HistogramLogReader(str(files.hlog), HdrHistogram(1, hdr_record.HIGHEST_US, 3))
    tags = {}
    while (h := reader.get_next_interval_histogram()) is not None:
        tags[h.get_tag()] = h
    reader.close()
    assert set(tags) == {"ttft", "tpot", "itl", "e2el", "queue"}
    assert tags["itl"].get_total_count() == 36
    assert tags["ttft"].get_value_at_percentile(50) == pytest.approx(50_000, rel=0.001)  # µs
    # the same histograms are embedded in the result JSON
    embedded = hdr_record.decode(res["hdr_histograms"]["itl"])
    assert embedded.get_total_count() == 36 and res["hdr_histograms"]["unit"] == "us"


def test_request_store(written: tuple[dict, PointFiles, RunConfig]) -> None:
    res, files, _ = written
    rows = read_requests(files.store.requests)
    assert len(rows) == 10 and res["per_request"] == {
        "requests": "r.requests.npy", "chunks": "r.chunks.npy", "details": "r.details.jsonl", "rows": 10,
        "complete": True, "error": None}
    first = rows[rows["prompt_id"] == 0][0]
    assert first["first_ms"] - first["sent_ms"] == pytest.approx(50.0) and first["chunks"] == 5 and first["ok"]
    failed = rows[rows["prompt_id"] == 3][0]
    assert failed["error"] == b"http_500" and math.isnan(failed["first_ms"]) and not failed["ok"]
    chunks = np.load(files.store.chunks)  # a standard .npy file
    assert len(chunks) == 45 and chunks[chunks["prompt_id"] == 0]["t_ms"].tolist() == pytest.approx([50, 70, 90, 110, 130])
    details = [json.loads(line) for line in files.store.details.read_text().splitlines()]
    assert {d["prompt_id"]: d.get("error_detail") for d in details}[3] == "boom"
    assert {d["prompt_id"]: d["text"] for d in details}[0] == "text 0"


def test_large_point_keeps_arrays_in_the_store_only(tmp_path: Path) -> None:
    small = _write(RunConfig.from_flat(**{**CFG, "inline_requests": 10}), _files(tmp_path), _records())
    (tmp_path / "big").mkdir()
    big = _write(RunConfig.from_flat(**{**CFG, "inline_requests": 9}), _files(tmp_path / "big"), _records())
    assert len(small["ttfts"]) == 10
    assert not {"ttfts", "itls", "input_lens", "output_lens", "errors"} & set(big)
    assert big["per_request"]["rows"] == 10 and big["per_request"]["requests"] == "r.requests.npy"
    # the figures do not depend on where the arrays went
    for key in ("mean_ttft_ms", "p99_itl_ms", "std_e2el_ms", "completed", "concurrency", "total_output_tokens"):
        assert big[key] == small[key], key


def test_unwritable_store_keeps_the_figures(tmp_path: Path) -> None:
    files = _files(tmp_path / "gone")  # the store's folder does not exist: every store write fails
    files.result = tmp_path / "r.json"
    files.hlog = tmp_path / "r.hlog"
    res = _write(RunConfig.from_flat(**CFG), files, _records())
    assert res["completed"] == 9 and res["mean_ttft_ms"] == pytest.approx(50.0)
    assert res["per_request"]["complete"] is False and "No such file" in res["per_request"]["error"]
    assert res["per_request"]["rows"] == 0


def test_no_successful_request_reports_absent_latencies(tmp_path: Path) -> None:
    records = [RequestRecord(prompt_id=i, input_len=64, output_len=5, sent_ns=T0, last_ns=T0 + MS, status=400,
                             error="http_400", error_detail="too long") for i in range(3)]
    res = _write(RunConfig.from_flat(**CFG), _files(tmp_path), records)
    assert res["completed"] == 0 and res["failed"] == 3
    assert res["mean_ttft_ms"] is None and res["p99_itl_ms"] is None and res["median_e2el_ms"] is None
    assert res["errors"] == ["http_400: too long"] * 3


def test_filename_template_fields() -> None:
    cfg = RunConfig.from_flat(concurrencies=[1, 2], rates=[math.inf], input_len=128, output_len=256)
    names = {render_filename(cfg.output.result_filename, cfg, c, r, "org/model", "D") for c, r in cfg.points()}
    assert names == {"openai-c1-rinf-i128-o256-D.json", "openai-c2-rinf-i128-o256-D.json"}
    assert render_filename("{model}_{rate}", cfg, None, 2.5, "org/model", "D") == "org_model_2.5.json"


@pytest.mark.parametrize("template,match", [
    ("x.json", "add {concurrency}"),
    ("{nope}.json", "unknown field"),
    ("a/b.json", "not a path"),
])
def test_bad_templates_rejected(template: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_flat(concurrencies=[1, 2], result_filename=template)


def test_disk_full_mid_run_keeps_the_figures(tmp_path: Path) -> None:
    files = _files(tmp_path)
    files.store.requests.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    res = _write(RunConfig.from_flat(**CFG), files, _records())
    assert res["completed"] == 9 and res["p99_itl_ms"] == pytest.approx(20.0, rel=1e-3)
    assert res["per_request"]["complete"] is False and "No space left" in res["per_request"]["error"]
