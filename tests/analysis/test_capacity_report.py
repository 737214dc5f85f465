"""Capacity records in the analysis: full-scale rows, comparisons by interval, the report, the bench's command."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from analysis.capacity import conclusions, load_capacities, write_capacity_report
from orchestrator.bench import EngineTarget, search_argv, targets_for


def record(label: str, capacity: float, interval: tuple[float, float], *, scale: float = 1.0, over: str = "concurrency",
           slos: tuple[str, ...] = ("ttft:p99<=200",), saturated: bool = False) -> dict:
    return {"schema": "loadgen-capacity/1", "label": label, "over": over,
            "unit": "req/s" if over == "rate" else "concurrent requests", "capacity": capacity, "status": "found",
            "bracket": list(interval), "boundary": sum(interval) / 2, "interval": list(interval), "confidence": 0.95,
            "client_saturated": saturated, "search": {"over": over, "slos": list(slos), "goodput_target": None},
            "input_len": 128, "output_len": 128, "probes": [{"load": capacity}] * 5, "duration_s": 10.0,
            "server": {"engine": "sim", "profile": label, "time_scale": scale}, "metadata": {}, "seconds": 60}


def write(directory: Path, rec: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{rec['label']}.capacity.json").write_text(json.dumps(rec))
    (directory / "not-a-record.json").write_text(json.dumps({"output_throughput": 1.0}))


def test_rows_are_at_full_scale(tmp_path):
    write(tmp_path / "r", record("r", 400.0, (400.0, 440.0), scale=10.0, over="rate", slos=("ttft:p99<=200",)))
    write(tmp_path / "c", record("c", 60.0, (60.0, 64.0), scale=10.0))
    table = load_capacities([tmp_path]).set_index("label")
    assert table.loc["r", "capacity"] == 40.0 and table.loc["r", "interval high"] == 44.0
    assert table.loc["r", "SLOs"] == "ttft:p99<=2000"
    assert table.loc["c", "capacity"] == 60.0 and table.loc["c", "time_scale"] == 10.0


def test_a_difference_is_stated_only_when_intervals_separate(tmp_path):
    a = record("A", 60, (60, 66))
    table = pd.DataFrame([load_capacities_row(a), load_capacities_row(record("B", 90, (90, 99)))])
    (ok, text), = conclusions(table)
    assert ok and "B takes more traffic than A" in text
    table = pd.DataFrame([load_capacities_row(a), load_capacities_row(record("B", 64, (64, 70)))])
    (ok, text), = conclusions(table)
    assert not ok and "not supported by the data" in text
    table = pd.DataFrame([load_capacities_row(a), load_capacities_row(record("B", 90, (90, 99), slos=("ttft:p99<=9",)))])
    (ok, text), = conclusions(table)
    assert not ok and "not comparable" in text and "SLOs" in text
    table = pd.DataFrame([load_capacities_row(a), load_capacities_row(record("B", 90, (90, 99), saturated=True))])
    (ok, text), = conclusions(table)
    assert not ok and "client was saturated" in text


def load_capacities_row(rec: dict) -> dict:
    from analysis.capacity import row

    return row(rec)


def test_capacity_report_files(tmp_path):
    for rec in (record("A", 60, (60, 66)), record("B", 90, (90, 99))):
        write(tmp_path / rec["label"], rec)
    table = load_capacities([tmp_path / "A", tmp_path / "B"])
    files = write_capacity_report(table, tmp_path / "report", baseline="A")
    csv = pd.read_csv(files["summary_csv"])
    assert list(csv["label"]) == ["A", "B"] and list(csv["interval low"]) == [60, 90]
    assert "B takes more traffic than A" in files["comparison_md"].read_text()
    page = files["html"].read_text()
    assert "data:image/png;base64" in page and "Capacity per label" in page


def test_bench_scales_fitted_profiles_and_the_slos():
    targets = targets_for("sim", None, None, None, like_report=False)
    assert all("--time-scale" in t.extra_args and t.metadata["time_scale"] == "10" for t in targets)
    fast = targets_for("sim", "fast", None, None, like_report=False)[0]
    assert "--time-scale" not in fast.extra_args
    argv = search_argv("http://127.0.0.1:1", targets[0], Path("/tmp/x"), "openai", "deepseek-r1",
                       ("ttft:p99<=2000", "tpot:p99<=200"), 10.0)
    slos = [argv[i + 1] for i, a in enumerate(argv) if a == "--slo"]
    assert slos == ["ttft:p99<=200", "tpot:p99<=20"]
    assert argv[argv.index("--over") + 1] == "concurrency"
    plain = search_argv("http://127.0.0.1:1", EngineTarget("vllm", "vllm"), Path("/tmp/x"), "vllm", "deepseek-r1",
                        ("ttft:p99<=2000",), 10.0)
    assert plain[plain.index("--slo") + 1] == "ttft:p99<=2000"


def test_the_bench_states_the_cost_at_the_slo(tmp_path):
    from orchestrator.bench import write_capacity_bench_report

    # 40 req/s of 128 output tokens at full scale on 8 GPUs at $2/GPU-hour: 16 $/h over 18.432 M tokens/h
    write(tmp_path / "r", record("r", 400.0, (400.0, 440.0), scale=10.0, over="rate"))
    assert write_capacity_bench_report(tmp_path, ["r"], echo=lambda _: None, price=(2.0, 8)) == 1
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert table["$/M output tokens at SLO"][0] == pytest.approx(16 / 18.432, rel=1e-3)
    # without --gpus the record's launch plan says how many GPUs the price is for
    rec = record("r", 400.0, (400.0, 440.0), scale=10.0, over="rate")
    rec["metadata"] = {"tensor_parallel_size": "8"}
    write(tmp_path / "r", rec)
    assert write_capacity_bench_report(tmp_path, ["r"], echo=lambda _: None, price=(2.0, None)) == 1
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert table["$/M output tokens at SLO"][0] == pytest.approx(16 / 18.432, rel=1e-3)
    assert "$/M output tokens at SLO" in (tmp_path / "report" / "report.html").read_text()
