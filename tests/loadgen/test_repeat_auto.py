"""`--repeat auto`: repeat a point until its figures' 95 % intervals are narrow enough, or a maximum."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from loadgen.convergence import RepeatError, done, half_width, parse_repeat, parse_width
from tests.conftest import REPO_ROOT


def test_the_interval_is_students_t_and_needs_three_runs():
    # mean 12, sd 2, three runs: t(0.975, 2) = 4.303 → ±4.303 · 2 / √3 = ±4.97, i.e. ±41.4 % of the mean
    assert half_width([10.0, 12.0, 14.0]) == pytest.approx(4.303 * 2 / math.sqrt(3) / 12)
    assert half_width([5.0]) == math.inf and half_width([0.0, 0.0]) == math.inf
    runs = [{"output_throughput": v} for v in (100.0, 100.0)]
    assert not done(runs, ["output_throughput"], 0.05)  # two identical runs are not yet an interval
    assert done([*runs, {"output_throughput": 100.0}], ["output_throughput"], 0.05)
    assert parse_repeat("auto") is None and parse_repeat("4") == 4 and parse_width("5%") == 0.05
    for bad in ("0", "many"):
        with pytest.raises(RepeatError):
            parse_repeat(bad)
    with pytest.raises(RepeatError):
        parse_width("150%")


def loadgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadgen.cli", *args], capture_output=True, text=True, timeout=180,
                          cwd=REPO_ROOT)


@pytest.mark.parametrize("args, said", [
    (["--repeat-width", "5%"], "--repeat-width applies to --repeat auto only"),
    (["--repeat", "auto", "--repeat-metric", "speed"], "--repeat-metric 'speed' is not a result figure"),
    (["--repeat", "auto", "--repeat-max", "2"], "--repeat-max 2 is below the 3 runs"),
    (["--repeat", "auto", "--repeat-width", "0"], "--repeat-width '0'"),
    (["--repeat", "often"], "--repeat 'often' is not a count or 'auto'"),
])
def test_bad_repeat_options_are_one_line_before_anything_runs(args, said):
    proc = loadgen("--base-url", "http://127.0.0.1:9", "--tokenizer", "deepseek-r1", *args)
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0


@pytest.mark.timeout(240)
def test_auto_repeats_stop_when_the_interval_is_narrow_or_at_the_maximum(sim_server, fixed_profile, tmp_path,
                                                                         private_cache):
    srv = sim_server("--profile", str(fixed_profile), "--time-scale", "10")
    common = ["--base-url", srv.base_url, "--tokenizer", "deepseek-r1", "--input-len", "16", "--output-len", "8",
              "--concurrency", "4", "--num-prompts", "12", "--no-progress", "--repeat", "auto",
              "--repeat-metric", "mean_tpot_ms"]
    proc = loadgen(*common, "--repeat-width", "50%", "--repeat-max", "5", "--output-dir", str(tmp_path / "wide"))
    assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "wide").glob("*.json"))
    lines = re.findall(r"repeat (\d+): 95 % interval of the mean mean_tpot_ms ±([0-9.]+|\?)", proc.stdout)
    assert 3 <= len(files) <= 5 and [int(k) for k, _ in lines] == list(range(1, len(files) + 1))
    widths = [float(w) if w != "?" else math.inf for _, w in lines]
    # it stopped at the first run (from the third) whose interval was within ±50 %, else at the maximum
    first_narrow = next((k for k, w in enumerate(widths, 1) if k >= 3 and w <= 50.0), 5)
    assert len(files) == first_narrow
    result = json.loads(files[0].read_text())
    assert result["repeat"] == {"index": 1, "of": None, "max": 5, "width": 0.5, "metrics": ["mean_tpot_ms"]}

    # a width no run can reach: the maximum, then it moves on
    proc = loadgen(*common, "--repeat-width", "0.0001%", "--repeat-max", "3", "--output-dir", str(tmp_path / "max"))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "max").glob("*.json"))) == 3
