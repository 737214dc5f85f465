"""loadgen-report on damaged, foreign and empty-handed inputs: every skipped file is named
with its reason, nothing usable is an error, and what was not measured is shown absent."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
from hdrh.histogram import HdrHistogram

import analysis
from analysis.checks import comparability
from tests.conftest import FIXTURES as FIXTURE_ROOT
from tests.conftest import REPO_ROOT

FIXTURES = FIXTURE_ROOT / "analysis"
GOOD = FIXTURES / "vllm-0.8.2" / "serving_benchmark_1_256_256.json"


def report(*args: str) -> subprocess.CompletedProcess:
    """loadgen-report without figures: what these tests read is what it says and its tables."""
    return subprocess.run([sys.executable, "-m", "analysis.cli", *args, "--no-plots"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def loadgen_result(**changes: object) -> dict:
    hist = HdrHistogram(1, 3_600_000_000, 3)
    for v in range(100_000, 300_000, 1000):
        hist.record_value(v)
    base = {
        "schema": "loadgen-result/1", "date": "20260101-000000", "backend": "openai", "model_id": "m",
        "num_prompts": 4, "request_rate": "inf", "max_concurrency": 4, "duration": 1.0, "completed": 4,
        "failed": 0, "total_input_tokens": 512, "total_output_tokens": 512, "output_throughput": 512.0,
        "mean_ttft_ms": 199.5, "p99_ttft_ms": 297.0, "mean_tpot_ms": 20.0, "random_input_len": 128,
        "random_output_len": 128, "ignore_eos": True, "versions": {"loadgen": "0.1.0"},
        "hdr_histograms": {"unit": "us", "significant_digits": 3, "ttft": hist.encode().decode()},
    }
    base.update(changes)
    return base


def test_every_skipped_file_is_named_with_its_reason(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    text = GOOD.read_text()
    (runs / "good.json").write_text(text)
    (runs / "good.requests.jsonl").write_text('{"prompt_id": 1}\n')  # a companion: used, not a run, not listed
    (runs / "cut.json").write_text(text[:100])
    (runs / "many.json").write_text(json.dumps({**json.loads(text), "completed": "many"}))
    broken = loadgen_result()
    blob = broken["hdr_histograms"]["ttft"]
    broken["hdr_histograms"]["ttft"] = blob[:20] + ("A" if blob[20] != "A" else "B") * 8 + blob[28:]
    (runs / "badhist.json").write_text(json.dumps(broken))
    (runs / "binary.json").write_bytes(b'{"a": "\xff\xfe"}')
    (runs / "empty.json").write_text("")
    (runs / "notes.json").write_text(json.dumps({"hello": 1}))
    out = tmp_path / "rep"
    proc = report(str(runs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    skipped = {line.split(": ", 2)[1].split("skipped ", 1)[1]: line.split(": ", 2)[2]
               for line in proc.stderr.splitlines() if line.startswith("loadgen-report: skipped ")}
    names = {Path(k).name: v for k, v in skipped.items()}
    assert set(names) == {"cut.json", "many.json", "badhist.json", "binary.json", "empty.json", "notes.json"}, proc.stderr
    assert names["cut.json"] == "truncated JSON at byte 100"
    assert "'completed' is \"many\", not a number" in names["many.json"]
    assert "'hdr_histograms.ttft' is not a valid HdrHistogram encoding" in names["badhist.json"]
    assert names["binary.json"] == "not UTF-8 text (byte 7)"  # offset of \xff
    assert names["empty.json"] == "empty file"
    assert "no serving figures" in names["notes.json"]
    assert len(pd.read_csv(out / "summary.csv")) == 1


def test_nothing_to_report_is_an_error(tmp_path: Path) -> None:
    cut = tmp_path / "cut.json"
    cut.write_text(GOOD.read_text()[:-7])
    for target in (tmp_path, cut):  # a folder, and the file named explicitly
        proc = report(str(target), "--out", str(tmp_path / "rep"))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr
        assert lines[0].startswith(f"loadgen-report: skipped {cut}: truncated JSON at byte ")
        assert lines[1] == "loadgen-report: error: nothing to report: all 1 file(s) found were skipped"
        assert len(lines) == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "rep").exists()


def test_usage_errors_are_one_line() -> None:
    for args in ([], ["--bogus"], ["x", "--out"]):
        proc = report(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("loadgen-report: error: ")


def test_failed_requests_do_not_make_outputs_look_short(tmp_path: Path) -> None:
    """vLLM lists a failed request with output length 0; the mean is over completed ones."""
    record = json.loads(GOOD.read_text())
    ok_itls = record["itls"][0]
    record.update(
        num_prompts=4, completed=2, total_output_tokens=None,
        errors=["", "Server disconnected", "", "Server disconnected"],
        input_lens=[256] * 4, output_lens=[256, 0, 256, 0],
        ttfts=[record["ttfts"][0], 0.0, record["ttfts"][0], 0.0], itls=[ok_itls, [], ok_itls, []],
        generated_texts=["x", "", "x", ""],
    )
    path = tmp_path / "serving_benchmark_1_256_256.json"
    path.write_text(json.dumps(record))
    run = analysis.load(path).iloc[0]
    assert run["mean_output_len"] == 256
    assert not [i for i in comparability(analysis.load(path)) if i.kind == "output_len"]


def test_short_outputs_with_ignore_eos_on_point_at_a_length_limit(tmp_path: Path) -> None:
    path = tmp_path / "short.json"
    path.write_text(json.dumps(loadgen_result(total_output_tokens=4 * 64, mean_output_len=64)))
    (issue,) = [i for i in comparability(analysis.load(path)) if i.kind == "output_len"]
    assert "ignore_eos was on" in issue.message and "rerun with ignore_eos on" not in issue.message


def test_latencies_of_a_run_where_nothing_completed_are_absent(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    # as loadgen now writes it (null), and as older loadgen wrote it (zeros)
    for name, value in (("null", None), ("zero", 0.0)):
        res = loadgen_result(label=name, completed=0, failed=4, total_output_tokens=0, output_throughput=0.0,
                             mean_ttft_ms=value, p99_ttft_ms=value, mean_tpot_ms=value, hdr_histograms={})
        (runs / f"{name}.json").write_text(json.dumps(res))
    out = tmp_path / "rep"
    proc = report(str(runs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 2
    for column in ("mean TTFT(ms)", "p99 TTFT(ms)", "mean TPOT(ms)"):
        assert table[column].isna().all(), table[column]
    html = (out / "report.html").read_text()
    summary_html = html.split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    header = re.findall(r"<th>(.*?)</th>", summary_html)
    col = header.index("mean TTFT(ms)")
    for row in re.findall(r"<tr>(.*?)</tr>", summary_html, re.S)[1:]:
        assert re.findall(r"<td>(.*?)</td>", row, re.S)[col] == "—", row


def test_loadgens_side_files_are_read_through_their_result_not_skipped(sim_fast, tmp_path: Path) -> None:
    """A real loadgen folder: the result, its .hlog, the per-request store, the error/text details and the
    server-metrics side file. Only the result is a run; nothing is reported as skipped."""
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "loadgen.cli", "--base-url", sim_fast.base_url, "--tokenizer",
                          "deepseek-r1", "--num-prompts", "4", "--input-len", "16", "--output-len", "4",
                          "--save-text", "--save-requests", "--metrics-interval", "0.1", "--no-progress",
                          "--output-dir", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    suffixes = {p.name.split(".", 1)[1] for p in out.iterdir()}
    assert {"json", "hlog", "requests.npy", "chunks.npy", "details.jsonl", "metrics.jsonl"} <= suffixes
    res = report(str(out), "--out", str(tmp_path / "report"))
    assert res.returncode == 0, res.stderr
    assert "skipped" not in res.stderr, res.stderr
    assert len(pd.read_csv(tmp_path / "report" / "summary.csv")) == 1


def _loadgen_folder(base_url: str, out: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "loadgen.cli", "--base-url", base_url, "--tokenizer",
                          "deepseek-r1", "--num-prompts", "8", "--input-len", "16", "--output-len", "4",
                          "--metrics-interval", "0.1", "--no-progress", "--label", "run", "--output-dir", str(out)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_damaged_side_files_are_named_and_the_run_still_reported(sim_fast, tmp_path: Path) -> None:
    from loadgen.store import HEADER_BYTES, REQUEST_DTYPE

    out = tmp_path / "run"
    _loadgen_folder(sim_fast.base_url, out)
    (store,) = out.glob("*.requests.npy")
    (side,) = out.glob("*.metrics.jsonl")
    with open(store, "r+b") as f:  # a writer that stopped half-way: the header says 8 rows, 4 are there
        f.truncate(HEADER_BYTES + 4 * REQUEST_DTYPE.itemsize)
    side.write_bytes(b"\x00garbage\x01\n{}\n")
    res = report(str(out), "--out", str(tmp_path / "rep"))
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("loadgen-report: damaged ") for line in lines)
    assert any(store.name in line and "holds 4 of the 8 rows" in line for line in lines)
    assert any(side.name in line and "line 1 is not JSON" in line for line in lines)
    assert len(pd.read_csv(tmp_path / "rep" / "summary.csv")) == 1

    store.write_bytes(b"not numpy at all" * 100)  # garbage: named, and the report goes on without it
    res = report(str(out), "--out", str(tmp_path / "rep2"))
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert any(store.name in line and "not a readable per-request store" in line
               for line in res.stderr.splitlines())
    assert len(pd.read_csv(tmp_path / "rep2" / "summary.csv")) == 1


def _capacity_record() -> dict:
    return {"schema": "loadgen-capacity/1", "label": "vllm", "over": "concurrency", "unit": "concurrent requests",
            "capacity": 32.0, "status": "found", "bracket": [32.0, 34.0], "boundary": 33.0, "interval": [32.0, 34.0],
            "confidence": 0.95, "client_saturated": False,
            "search": {"over": "concurrency", "slos": ["ttft:p99<=2000"], "goodput_target": None},
            "input_len": 128, "output_len": 128, "probes": [{"load": 32.0}] * 4, "duration_s": 10.0,
            "server": {"engine": "sim"}, "metadata": {}, "seconds": 40}


def test_a_capacity_record_is_reported_as_one_not_as_a_point(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "vllm.capacity.json").write_text(json.dumps(_capacity_record()))
    res = report(str(runs), "--out", str(tmp_path / "alone"))  # alone: a capacity report, no traceback
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "1 capacity record" in res.stdout
    table = pd.read_csv(tmp_path / "alone" / "summary.csv")
    assert table["capacity"].tolist() == [32.0] and table["status"].tolist() == ["found"]

    (runs / "good.json").write_text(GOOD.read_text())  # beside a benchmark point: each reported as what it is
    res = report(str(runs), "--out", str(tmp_path / "both"))
    assert res.returncode == 0, res.stderr
    points = pd.read_csv(tmp_path / "both" / "summary.csv")
    assert len(points) == 1 and 500 not in points["concurrency"].tolist()
    assert pd.read_csv(tmp_path / "both" / "capacity" / "summary.csv")["capacity"].tolist() == [32.0]
    assert "skipped" not in res.stderr
