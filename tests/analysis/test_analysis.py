"""analysis: loading the three producers' formats, summaries, checks, comparisons, HDR, the report command."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hdrh.histogram import HdrHistogram

import analysis
from analysis import hdr
from analysis.checks import comparability
from analysis.compare import compare
from analysis.formats import FormatError, detect_format, parse_server_flags
from analysis.load import LoadError, is_complete
from analysis.summary import REPORT_COLUMNS
from tests.conftest import FIXTURES as FIXTURE_ROOT
from tests.conftest import REPO_ROOT

FIXTURES = FIXTURE_ROOT / "analysis"
VLLM_DIR = FIXTURES / "vllm-0.8.2"
SGLANG_DIR = FIXTURES / "sglang-ea52b45"


def _raw(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[0])


# --- loading ---------------------------------------------------------------------------------


def test_vllm_result_is_recognised_and_mapped():
    path = VLLM_DIR / "serving_benchmark_8_256_256.json"
    raw = _raw(path)
    runs = analysis.load(path)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["format"] == "vllm" and run["engine"] == "vllm"
    # No max_concurrency and an infinite rate: the point is a burst of num_prompts requests.
    assert run["concurrency"] == raw["num_prompts"] == 8
    assert run["burst"]
    # vLLM does not record the asked lengths: they come from the report's file name.
    assert (run["input_len"], run["output_len"]) == (256, 256)
    assert run["mean_output_len"] == pytest.approx(statistics.mean(raw["output_lens"]))
    assert run["mean_output_len"] < 256  # stopped at EOS, as in the field report
    assert run["ignore_eos"] is False or run["ignore_eos"] == False  # noqa: E712 - numpy bool
    assert "vLLM" in run["ignore_eos_source"]
    assert run["p99_ttft_ms"] == pytest.approx(raw["p99_ttft_ms"])
    assert run["mean_tpot_ms"] == pytest.approx(raw["mean_tpot_ms"])
    # Input throughput is not a vLLM key: derived from its totals.
    assert run["input_throughput"] == pytest.approx(raw["total_input_tokens"] / raw["duration"])
    # E2E percentiles are not in the file either: derived from the per-request lists.
    e2e = sorted((t + sum(g)) * 1000 for t, g in zip(raw["ttfts"], raw["itls"], strict=True))
    assert run["p50_e2el_ms"] == pytest.approx(statistics.median(e2e))


def test_sglang_jsonl_is_recognised_and_mapped():
    path = SGLANG_DIR / "serving_benchmark_8_256_256.json"
    raw = _raw(path)
    run = analysis.load(path).iloc[0]
    assert run["format"] == "sglang" and run["engine"] == "sglang"
    assert run["concurrency"] == raw["max_concurrency"] == 8
    assert run["measured_concurrency"] == pytest.approx(raw["concurrency"])
    assert (run["input_len"], run["output_len"]) == (raw["random_input_len"], raw["random_output_len"])
    assert run["mean_e2el_ms"] == pytest.approx(raw["mean_e2e_latency_ms"])
    assert run["p99_e2el_ms"] == pytest.approx(raw["p99_e2e_latency_ms"])
    assert run["p50_ttft_ms"] == pytest.approx(raw["median_ttft_ms"])
    assert math.isinf(run["request_rate"])
    assert bool(run["ignore_eos"]) is True


def test_sglang_appended_lines_are_separate_runs(tmp_path):
    lines = [_raw(SGLANG_DIR / f"serving_benchmark_{c}_256_256.json") for c in (1, 8)]
    path = tmp_path / "sglang.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    runs = analysis.load(path)
    assert sorted(runs["concurrency"]) == [1, 8]
    assert runs["run_id"].nunique() == 2


def test_folders_mix_formats_and_keep_the_given_order():
    runs = analysis.load([VLLM_DIR, SGLANG_DIR])
    assert list(pd.unique(runs["label"])) == ["vllm-0.8.2", "sglang-ea52b45"]
    assert set(runs["format"]) == {"vllm", "sglang"}
    assert len(runs) == 4


def test_loadgen_result_with_embedded_histograms(tmp_path):
    ttft_us = [100_000 + 1000 * i for i in range(200)]  # 100..299 ms
    hist = HdrHistogram(1, 3_600_000_000, 3)
    for v in ttft_us:
        hist.record_value(v)
    result = {
        "schema": "loadgen-result/1", "date": "20260101-000000", "backend": "openai", "model_id": "m",
        "tokenizer_id": "deepseek-r1", "num_prompts": 200, "request_rate": "inf", "max_concurrency": 16,
        "duration": 10.0, "completed": 200, "failed": 0, "total_input_tokens": 200 * 128,
        "total_output_tokens": 200 * 128, "output_throughput": 2560.0, "mean_ttft_ms": 199.5,
        "p99_ttft_ms": 297.0, "random_input_len": 128, "random_output_len": 128, "ignore_eos": True,
        "label": "mine", "client_saturated": True, "partial": False, "prompt_token_mismatches": 3,
        "concurrency": 15.2, "metadata": {"engine": "sim", "server_args": "--enforce-eager --max-model-len 4096"},
        "versions": {"loadgen": "0.1.0", "server": "0.8.2"},
        "hdr_histograms": {"unit": "us", "significant_digits": 3, "ttft": hist.encode().decode()},
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(result))
    run = analysis.load(path).iloc[0]
    assert run["format"] == "loadgen" and run["label"] == "mine" and run["engine"] == "sim"
    assert run["concurrency"] == 16 and run["measured_concurrency"] == pytest.approx(15.2)
    assert run["engine_version"] == "0.8.2"
    assert bool(run["engine_eager"]) is True and run["engine_context_length"] == 4096
    assert not run["burst"]
    hists = analysis.histograms(path)
    row = hists[hists["metric"] == "ttft"].iloc[0]
    assert row["count"] == 200
    assert hdr.value_ms(row["histogram"], 50, row["ms_per_unit"]) == pytest.approx(statistics.median(ttft_us) / 1000, rel=0.01)
    kinds = {i.kind for i in comparability(analysis.load(path))}
    assert {"client_saturated", "prompt_mismatch"} <= kinds


def test_hlog_beside_a_result_is_read_and_intervals_merged(tmp_path):
    result = _raw(VLLM_DIR / "serving_benchmark_1_256_256.json")
    result.pop("ttfts")
    result.pop("itls")
    (tmp_path / "x.json").write_text(json.dumps(result))
    # The interval-log format: optional "Tag=<name>," then start, length, max, compressed histogram.
    lines = ["#[Histogram log format version 1.3]", '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"']
    for start in (0, 1):
        hist = HdrHistogram(1, 3_600_000_000, 3)
        for v in range(1000):
            hist.record_value(50_000 + 100 * v)  # 50..150 ms in µs
        lines.append(f"Tag=tpot,{start}.000,1.000,149.9,{hist.encode().decode()}")
    (tmp_path / "x.hlog").write_text("\n".join(lines) + "\n")
    hists = analysis.histograms(tmp_path)
    row = hists[hists["metric"] == "tpot"].iloc[0]
    assert row["count"] == 2000
    assert hdr.value_ms(row["histogram"], 50, row["ms_per_unit"]) == pytest.approx(100.0, rel=0.01)


def test_histograms_from_vllm_lists_merge_across_runs():
    hists = analysis.histograms(VLLM_DIR)
    itl = hists[hists["metric"] == "itl"]
    expected = sum(len(g) for p in sorted(VLLM_DIR.glob("*.json")) for g in _raw(p)["itls"])
    merged = analysis.merge_histograms(itl, by=["label"])
    assert len(merged) == 1 and merged.iloc[0]["count"] == expected
    assert set(itl["source"]) == {"raw lists"}


def test_requests_frame_from_vllm_lists():
    path = VLLM_DIR / "serving_benchmark_8_256_256.json"
    raw = _raw(path)
    reqs = analysis.requests(path)
    assert len(reqs) == raw["num_prompts"]
    assert list(reqs["output_len"]) == raw["output_lens"]
    assert reqs["ttft_ms"].tolist() == pytest.approx([t * 1000 for t in raw["ttfts"]])
    assert (reqs["concurrency"] == 8).all()


def test_loadgen_per_request_lines_are_used(tmp_path):
    result = _raw(VLLM_DIR / "serving_benchmark_1_256_256.json")
    result.update({"schema": "loadgen-result/1", "max_concurrency": 1, "label": "x"})
    (tmp_path / "r.json").write_text(json.dumps(result))
    rows = [{"prompt_id": i, "warmup": i == 0, "ttft_ms": 10.0 + i, "error": None} for i in range(4)]
    (tmp_path / "r.requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reqs = analysis.requests(tmp_path)
    assert reqs["prompt_id"].tolist() == [1, 2, 3]  # warm-up left out
    assert reqs["ok"].all()


def test_unknown_records_are_rejected_with_the_file_named(tmp_path):
    with pytest.raises(FormatError):
        detect_format({"hello": 1})
    bad = tmp_path / "notes.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(LoadError, match="skipped .*notes.json: not a usable result"):
        analysis.load(bad)
    # In a folder it is skipped, next to a real result.
    (tmp_path / "serving_benchmark_1_256_256.json").write_text((VLLM_DIR / "serving_benchmark_1_256_256.json").read_text())
    assert len(analysis.load(tmp_path)) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LoadError, match="no result files"):
        analysis.load(empty)


def test_is_complete_rejects_partial_and_damaged(tmp_path):
    good = _raw(VLLM_DIR / "serving_benchmark_1_256_256.json")
    (tmp_path / "a.json").write_text(json.dumps(good))
    (tmp_path / "b.json").write_text(json.dumps({**good, "partial": True}))
    (tmp_path / "c.json").write_text(json.dumps(good)[:100])
    assert is_complete(tmp_path / "a.json")
    assert not is_complete(tmp_path / "b.json")
    assert not is_complete(tmp_path / "c.json")
    assert not is_complete(tmp_path / "missing.json")


# --- summary, checks, comparison ---------------------------------------------------------------


def test_summary_starts_with_the_field_reports_columns():
    table = analysis.summary(analysis.load(FIXTURES))
    cols = list(table.columns)
    start = cols.index("concurrency")
    assert cols[start : start + len(REPORT_COLUMNS)] == list(REPORT_COLUMNS.values())
    for extra in ("p50 TTFT(ms)", "p99 TTFT(ms)", "p99 TPOT(ms)", "p99 ITL(ms)", "p99 E2EL(ms)", "error_rate", "goodput(req/s)"):
        assert extra in cols


def test_field_report_command_lines_give_engine_settings():
    vllm = ("python3 -m vllm.entrypoints.openai.api_server --model /mnt/models/DeepSeek-R1 --gpu-memory-utilization 0.95 "
            "--tensor-parallel-size 8 --max_num_seqs 256 --max_model_len 4096 --enable-chunked-prefill=False --enforce-eager")
    sglang = ("python3 -m sglang.launch_server --model-path /mnt/models/DeepSeek-R1 --tensor-parallel-size 8 "
              "--mem-fraction-static 0.90 --context-length 65536 --chunked-prefill-size 4096")
    v, s = parse_server_flags(vllm), parse_server_flags(sglang)
    assert v["eager"] is True and v["context_length"] == "4096" and v["mem_fraction"] == "0.95"
    assert "eager" not in s and s["context_length"] == "65536" and s["mem_fraction"] == "0.90"


def test_checks_flag_what_the_field_report_got_wrong():
    issues = comparability(analysis.load([VLLM_DIR, SGLANG_DIR]))
    kinds = [i.kind for i in issues]
    assert "ignore_eos" in kinds and "client" in kinds
    length = next(i for i in issues if i.kind == "output_len")
    assert length.labels == ("vllm-0.8.2",) and "of 256" in length.message
    assert {i.labels[0] for i in issues if i.kind == "burst"} == {"vllm-0.8.2", "sglang-ea52b45"}


def test_checks_flag_different_engine_settings(tmp_path):
    for name, args in (("a", "--enforce-eager --max-model-len 4096"), ("b", "--context-length 65536")):
        rec = _raw(SGLANG_DIR / "serving_benchmark_8_256_256.json")
        rec["server_args"] = args
        (tmp_path / name).mkdir()
        (tmp_path / name / "serving_benchmark_8_256_256.json").write_text(json.dumps(rec))
    issues = comparability(analysis.load([tmp_path / "a", tmp_path / "b"]))
    text = " ".join(i.message for i in issues if i.kind == "engine_settings")
    assert "context length" in text and "4096" in text and "65536" in text
    assert "eager" in text


def _runs(label: str, throughput: list[float], ttft: list[float], concs=(1, 2, 4, 8), out_len=128.0) -> pd.DataFrame:
    return pd.DataFrame({
        "label": label, "concurrency": list(concs), "input_len": 128, "output_len": 128,
        "mean_output_len": out_len, "mean_input_len": 128.0, "num_prompts": [max(4 * c, 32) for c in concs],
        "request_rate": math.inf, "burst": False, "ignore_eos": True, "ignore_eos_source": "recorded",
        "client_saturated": False, "partial": False, "output_throughput": throughput, "mean_ttft_ms": ttft,
        "error_rate": 0.0,
    })


def test_compare_states_a_trend_only_where_it_holds():
    a = _runs("A", [100, 200, 300, 400], [50, 60, 70, 80])
    b = _runs("B", [102, 205, 411, 548], [50, 90, 105, 120])
    result = compare(a, b)
    texts = [c.text for c in result.supported]
    assert any("output throughput is 1.37× A's from concurrency 4 up" in t for t in texts), texts
    assert any("mean TTFT is 1.50× A's from concurrency 2 up" in t and "A is lower" in t for t in texts), texts
    assert not result.unsupported
    assert list(result.table["concurrency"]) == [1, 2, 4, 8]
    assert result.table["output throughput B/A"].iloc[-1] == pytest.approx(548 / 400)
    md = result.to_markdown()
    assert md.index("Comparability") < md.index("Conclusions")


def test_compare_withholds_conclusions_the_checks_undermine():
    a = _runs("A", [100, 200, 300, 400], [50, 60, 70, 80], out_len=100.0)
    b = _runs("B", [150, 300, 450, 600], [50, 60, 70, 80])
    result = compare(a, b)
    assert not [c for c in result.supported if "throughput" in c.text]
    blocked = [c for c in result.unsupported if "output throughput" in c.text]
    assert blocked and any("output length" in cav for cav in blocked[0].caveats)


def test_engine_setting_differences_qualify_but_do_not_block():
    a = _runs("A", [100, 200, 300, 400], [50, 60, 70, 80]).assign(engine_eager=True)
    b = _runs("B", [150, 300, 450, 600], [50, 60, 70, 80]).assign(engine_eager=False)
    result = compare(a, b)
    held = [c for c in result.supported if "output throughput is 1.50×" in c.text]
    assert held and "eager mode" in held[0].full_text and "as configured" in held[0].full_text
    assert any(i.kind == "engine_settings" for i in result.issues)


def test_a_drifting_ratio_is_given_as_a_range_with_its_direction():
    a = _runs("A", [100, 200, 300, 400], [50, 60, 70, 80])
    b = _runs("B", [200, 320, 390, 480], [50, 60, 70, 80])
    texts = [c.text for c in compare(a, b).supported]
    assert "B's output throughput is 1.20–2.00× A's at every concurrency (2.00× at concurrency 1, 1.20× at 8)" in texts


def test_a_peak_still_rising_at_the_sweeps_end_is_said_to_be_the_sweeps():
    rising = _runs("A", [100, 200, 300, 400], [50, 60, 70, 80])  # +33 % from 4 to 8
    plateau = _runs("B", [150, 300, 450, 420], [50, 60, 70, 80])
    flat_end = _runs("B", [150, 300, 450, 460], [50, 60, 70, 80])  # highest at 8, but +2 %: a plateau

    def peak_text(a, b):
        (peak,) = [c for c in compare(a, b).conclusions if c.figure == "peak output throughput"]
        return peak.text

    text = peak_text(rising, plateau)
    assert "A 400 tok/s at concurrency 8, B 450 tok/s at concurrency 4 (B/A 1.12×" in text
    assert "A still rising at the sweep's highest concurrency: the sweep's peak, not necessarily the deployment's" in text
    assert "A and B still rising" in peak_text(rising, rising.assign(label="B"))
    assert peak_text(rising, flat_end).count("still rising") == 1 and "A still rising" in peak_text(rising, flat_end)
    assert peak_text(plateau.assign(label="A"), flat_end).endswith("(B/A 1.02×)")


def test_a_single_point_is_not_a_trend():
    a = _runs("A", [100, 200, 300, 400], [50, 60, 70, 80])
    b = _runs("B", [100, 300, 300, 400], [50, 60, 70, 80])
    assert not [c for c in compare(a, b).conclusions if "output throughput is" in c.text]


# --- HDR ------------------------------------------------------------------------------------


def test_hdr_merge_equals_one_histogram_of_all_samples():
    values = [0.5 + i * 0.37 for i in range(4000)]
    whole = hdr.from_ms(values)
    merged = hdr.merge([hdr.from_ms(values[:1000]), hdr.from_ms(values[1000:])])
    assert merged.get_total_count() == whole.get_total_count() == 4000
    for p in (50, 90, 99, 99.9):
        assert hdr.value_ms(merged, p) == hdr.value_ms(whole, p)
    assert hdr.value_ms(whole, 50) == pytest.approx(statistics.median(values), rel=0.002)


def test_hdr_merge_converts_units():
    in_ms = HdrHistogram(1, 3_600_000, 3)
    for v in range(1, 101):
        in_ms.record_value(v)  # 1..100 ms, recorded in ms
    merged = hdr.merge([in_ms, hdr.from_ms([float(v) for v in range(1, 101)])], [1.0, 0.001])
    assert merged.get_total_count() == 200
    assert hdr.value_ms(merged, 50) == pytest.approx(50.0, rel=0.01)


def test_percentile_curve_stops_where_samples_run_out():
    curve = hdr.percentile_curve(hdr.from_ms([float(v) for v in range(1, 1001)]))
    assert curve["percentile"].max() <= 99.9 + 1e-9
    assert curve["value_ms"].is_monotonic_increasing
    assert curve["value_ms"].iloc[-1] == pytest.approx(1000.0, rel=0.001)


# --- the command ----------------------------------------------------------------------------


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "analysis.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def test_report_command_writes_every_artefact(tmp_path):
    out = tmp_path / "rep"
    proc = _report(str(VLLM_DIR), str(SGLANG_DIR), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    first_warning = next(i for i, line in enumerate(lines) if line.startswith("WARNING"))
    comparison = next(i for i, line in enumerate(lines) if "(B) vs" in line)
    assert first_warning < comparison
    assert "sglang-ea52b45 (B) vs vllm-0.8.2 (A)" in proc.stdout
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 4 and "mean TTFT(ms)" in table.columns
    md = (out / "comparison.md").read_text()
    assert "EOS handling" in md and "not comparable" in md
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    for name in ("output_throughput.png", "ttft_vs_concurrency.png", "tpot_vs_concurrency.png",
                 "itl_vs_concurrency.png", "latency_throughput.png", "hdr_ttft.png", "hdr_itl.png"):
        assert name in pngs
    assert len(list((out / "plots").glob("*.svg"))) == len(pngs)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)
    assert 'src="http' not in html and "<link" not in html


def test_a_report_without_plots_never_imports_matplotlib(tmp_path):
    """--no-plots costs what the tables cost: the plotting library is imported only to draw."""
    code = ("import sys\n"
            "from analysis.cli import main\n"
            "try:\n"
            "    main([sys.argv[1], '--out', sys.argv[2], '--no-plots'])\n"
            "except SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n"
            "assert 'matplotlib' not in sys.modules, 'a tables-only report imported matplotlib'\n")
    done = subprocess.run([sys.executable, "-c", code, str(VLLM_DIR), str(tmp_path / "report")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "report" / "summary.csv").is_file() and not (tmp_path / "report" / "plots").exists()


def test_no_plots_writes_the_same_tables_without_drawing(tmp_path):
    full, tables = tmp_path / "full", tmp_path / "tables"
    for out, extra in ((full, ()), (tables, ("--no-plots",))):
        proc = _report(str(VLLM_DIR), str(SGLANG_DIR), "--out", str(out), *extra)
        assert proc.returncode == 0, proc.stderr
    assert not (tables / "plots").exists()
    assert (tables / "summary.csv").read_bytes() == (full / "summary.csv").read_bytes()
    assert (tables / "comparison.md").read_text() == (full / "comparison.md").read_text()
    html = (tables / "report.html").read_text()
    assert "data:image" not in html and "mean TTFT(ms)" in html
    assert proc.stdout.splitlines()[-1].endswith("summary.csv, comparison.md, 0 plots, report.html")


def test_report_command_usage_errors_are_one_line():
    proc = _report("/no/such/dir", "--out", "/tmp/never")
    assert proc.returncode == 2
    assert "no such file or directory" in proc.stderr and "Traceback" not in proc.stderr
    proc = _report(str(VLLM_DIR), "--out", "/tmp/never-written", "--baseline", "nope")
    assert proc.returncode == 2 and "labels: vllm-0.8.2" in proc.stderr
    help_text = _report("--help").stdout
    assert "Examples:" in help_text and "--out" in help_text
    assert "0.1.0" in _report("--version").stdout
