"""loadgen-report on a real trace replay (the Azure fixture against sim): the replay's lag and
saturation flags in summary.csv and the report, no --input-len claimed for a trace's rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FIXTURES, REPO_ROOT

AZURE = FIXTURES / "workload" / "azure_code_slice.csv"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)


@pytest.fixture
def replayed(sim_server, private_cache, tmp_path: Path) -> Path:  # noqa: ARG001 - private_cache: its env
    srv = sim_server("--max-model-len", "4096", "--tokenizer", "deepseek-r1")
    out = tmp_path / "runs"
    proc = _run("-m", "loadgen.cli", "--base-url", srv.base_url, "--tokenizer", "deepseek-r1", "--dataset-name",
                "azure", "--dataset-path", str(AZURE), "--trace-speedup", "40", "--output-dir", str(out),
                "--no-progress", "--server-metrics", "off", "--label", "replay")
    assert proc.returncode == 0, proc.stderr
    return out


def test_summary_and_report_show_the_replay_lag_and_flags(replayed: Path, tmp_path: Path) -> None:
    (path,) = replayed.glob("*.json")
    result = json.loads(path.read_text())
    lag = result["trace"]["lag_ms"]
    proc = _run("-m", "analysis.cli", str(replayed), "--out", str(tmp_path / "report"), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    (row,) = table.to_dict("records")
    # two decimals, as every summary figure
    assert row["trace lag p50(ms)"] == pytest.approx(lag["p50"], abs=0.006)
    assert row["trace lag p99(ms)"] == pytest.approx(lag["p99"], abs=0.006)
    assert row["trace lag max(ms)"] == pytest.approx(lag["max"], abs=0.006)
    assert bool(row["replay behind"]) is result["trace"]["behind"]
    assert bool(row["client saturated"]) is result["client_saturated"]
    assert pd.isna(row["input_len"]) and pd.isna(row["output_len"])  # the rows' lengths, not --input-len's default
    assert row["mean_input_len"] == pytest.approx(result["total_input_tokens"] / result["completed"], abs=0.006)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "trace lag p99(ms)" in html and "trace_behind" in html


def test_a_replay_that_fell_behind_is_a_warning(replayed: Path, tmp_path: Path) -> None:
    from analysis import checks, load

    (path,) = replayed.glob("*.json")
    result = json.loads(path.read_text())
    # the same run as a client that could not keep up would have written it
    result["trace"].update(lag_ms={"p50": 4.0, "p99": 37.5, "max": 60.0}, behind=True)
    path.write_text(json.dumps(result))
    runs = load(str(replayed))
    found = [i for i in checks.check_client(runs) if i.kind == "replay_behind"]
    assert len(found) == 1 and "37.5 ms" in found[0].message and found[0].labels == ("replay",)
    assert "ttft" in found[0].affects
