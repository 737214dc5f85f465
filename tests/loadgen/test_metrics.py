"""Metrics from hand-built records whose figures are known from their timestamps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadgen import hdr_record
from loadgen.aggregate import summarize
from loadgen.metrics import good_mask, per_request, percentile_key
from loadgen.records import RequestRecord

MS = 1_000_000
T0 = 10**12  # perf_counter_ns values are never 0; stamps are relative to this


def rec(pid: int, sent_ms: float, chunks_ms: list[float], tokens: list[int], out: int, last_ms: float,
        intended_ms: float | None = None, **kw) -> RequestRecord:
    return RequestRecord(
        prompt_id=pid, input_len=100, output_len=out,
        intended_ns=T0 + int((sent_ms if intended_ms is None else intended_ms) * MS),
        sent_ns=T0 + int(sent_ms * MS),
        first_ns=T0 + int(chunks_ms[0] * MS) if chunks_ms else 0,
        last_ns=T0 + int(last_ms * MS),
        chunk_ns=[T0 + int(c * MS) for c in chunks_ms],
        chunk_tokens=tokens, output_tokens=out, output_tokens_source="usage", **kw,
    )


@pytest.fixture
def records() -> list[RequestRecord]:
    a = rec(0, 10, [110, 130, 150, 170], [1, 1, 2, 1], 5, 175, intended_ms=0, server_prompt_tokens=100)
    b = RequestRecord(prompt_id=1, input_len=100, output_len=5, sent_ns=T0 + 5 * MS, status=503, error="http_5xx")
    c = rec(2, 0, [50], [1], 1, 60)
    # chunk counts say 3 tokens, final usage says 6: each chunk carried 2
    d = rec(3, 0, [100, 130, 160], [1, 1, 1], 6, 165, server_prompt_tokens=103)
    return [a, b, c, d]


def test_per_request_figures(records: list[RequestRecord]) -> None:
    fig = per_request(records)
    assert [r.prompt_id for r in fig.records] == [0, 2, 3]
    assert fig.ttft_ms.tolist() == [100.0, 50.0, 100.0]
    assert fig.e2el_ms.tolist() == [165.0, 60.0, 165.0]
    assert fig.queue_ms.tolist() == [10.0, 0.0, 0.0]
    assert fig.ttft_from_intended_ms.tolist() == [110.0, 50.0, 100.0]
    assert fig.tpot_ms[0] == pytest.approx(65.0 / 4)
    assert math.isnan(fig.tpot_ms[1])  # one token: no TPOT
    assert fig.tpot_ms[2] == pytest.approx(65.0 / 5)
    # a 2-token chunk after 20 ms gives two 10 ms gaps
    assert fig.itls_of(0).tolist() == pytest.approx([20.0, 10.0, 10.0, 20.0])
    assert fig.itls_of(1).tolist() == []
    # rescaled to the final usage: 2 tokens per chunk, 30 ms apart
    assert fig.itls_of(2).tolist() == pytest.approx([15.0] * 4)
    assert fig.itl_ms.size == 8


def test_summary(records: list[RequestRecord]) -> None:
    s = summarize(records, T0, T0 + 1000 * MS, percentiles=[50, 99], goodput_slos_ms={"ttft": 100, "tpot": 15},
                  lag_samples_ns=[MS] * 100)
    assert s.completed == 3 and s.failed == 1
    assert s.errors_by_kind == {"http_5xx": 1}
    assert s.duration_s == pytest.approx(1.0)
    assert s.request_throughput == pytest.approx(3.0)
    assert s.total_input_tokens == 300 and s.total_output_tokens == 12
    assert s.output_throughput == pytest.approx(12.0)
    assert s.good_completed == 2  # a misses the TPOT SLO; c has no TPOT and passes
    assert s.stats["ttft"].mean == pytest.approx(250 / 3)
    assert s.stats["ttft"].median == pytest.approx(100.0)
    assert s.stats["tpot"].n == 2
    assert s.stats["itl"].n == 8
    assert s.stats["e2el"].percentiles[50.0] == pytest.approx(165.0)
    assert s.prompt_tokens_checked == 2 and s.prompt_token_mismatches == 1 and s.prompt_token_max_diff == 3
    assert s.max_concurrency_observed == 3
    assert s.lag_p99_ms == pytest.approx(1.0) and not s.client_saturated


def test_lag_marks_client_saturated(records: list[RequestRecord]) -> None:
    s = summarize(records, T0, T0 + MS * 1000, lag_samples_ns=[20 * MS] * 50)
    assert s.client_saturated and s.lag_max_ms == pytest.approx(20.0)


def test_goodput_rejects_unknown_metric(records: list[RequestRecord]) -> None:
    with pytest.raises(ValueError, match="unknown goodput metric"):
        good_mask(per_request(records), {"itl": 10})


def test_empty_run_reports_latencies_as_absent_not_zero() -> None:
    s = summarize([], 0, MS, percentiles=[99])
    assert s.completed == 0 and s.stats["ttft"].n == 0 and s.stats["ttft"].percentiles == {99.0: None}
    assert s.stats["ttft"].mean is None and s.stats["itl"].max is None


def test_warmup_records_are_excluded(records: list[RequestRecord]) -> None:
    records[0].warmup = True
    assert summarize(records, T0, T0 + MS).completed == 2


def test_percentile_key_matches_vllm_spelling() -> None:
    assert percentile_key(99) == "99" and percentile_key(99.9) == "99.9" and percentile_key(50.0) == "50"


def test_bulk_hdr_equals_per_value_recording() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate([
        rng.lognormal(8, 2.5, 50_000).astype(np.int64),  # µs across many decades
        rng.integers(0, 5000, 5_000),  # the linear first buckets, zeros included
        np.array([0, 1, 2047, 2048, 2049, hdr_record.HIGHEST_US]),
    ])
    values = np.clip(values, 0, hdr_record.HIGHEST_US)
    one_by_one = hdr_record.new_histogram()
    for v in values.tolist():
        assert one_by_one.record_value(v)
    bulk = hdr_record.new_histogram()
    assert hdr_record.record_array(bulk, values) == 0
    assert list(bulk.counts) == list(one_by_one.counts)
    assert (bulk.total_count, bulk.min_value, bulk.max_value) == (one_by_one.total_count, one_by_one.min_value, one_by_one.max_value)
    for p in (50, 90, 99, 99.9, 100):
        assert bulk.get_value_at_percentile(p) == one_by_one.get_value_at_percentile(p)
    assert hdr_record.encode(bulk) == hdr_record.encode(one_by_one)


def test_bulk_hdr_clips_and_counts_out_of_range() -> None:
    h = hdr_record.new_histogram()
    assert hdr_record.record_array(h, np.array([-5, 10, hdr_record.HIGHEST_US * 2])) == 2
    assert h.total_count == 3 and h.get_count_at_value(0) == 1
    assert h.get_max_value() == h.get_highest_equivalent_value(hdr_record.HIGHEST_US)
