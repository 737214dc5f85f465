"""Every numeric option is checked before any work: one line on stderr, exit code 2, no traceback.

Run through the real command (``python -m loadgen.cli`` in a subprocess), with no
server listening: a value that slipped past validation would reach the pre-flight
checks and fail differently (or, as ``--grace -1`` once did, with a traceback after
the prompts were built).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launcher.process import free_port

REPO = Path(__file__).resolve().parent.parent

BAD = [
    (["--grace", "-1"], "--grace"),
    (["--grace", "nan"], "--grace"),
    (["--grace", "inf"], "--grace"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "-3"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--timeout", "inf"], "--timeout"),
    (["--duration", "-5"], "--duration"),
    (["--duration", "nan"], "--duration"),
    (["--duration", "inf"], "--duration"),
    (["--burstiness", "-1"], "--burstiness"),
    (["--burstiness", "nan"], "--burstiness"),
    (["--warmup", "-1"], "--warmup"),
    (["--warmup", "x"], "--warmup"),
    (["--num-prompts", "0"], "--num-prompts"),
    (["--num-prompts", "-4"], "--num-prompts"),
    (["--num-prompts", "1.5"], "--num-prompts"),
    (["--percentiles", "0"], "--percentiles"),
    (["--percentiles", "101"], "--percentiles"),
    (["--percentiles", "nan"], "--percentiles"),
    (["--percentiles", "50,,99"], "--percentiles"),
    (["--random-range-ratio", "-0.1"], "--random-range-ratio"),
    (["--random-range-ratio", "nan"], "--random-range-ratio"),
    (["--rate", "nan"], "--rate"),
    (["--rate", "0"], "--rate"),
    (["--concurrency", "-2"], "--concurrency"),
    (["--input-len", "-1"], "--input-len"),
    (["--output-len", "0"], "--output-len"),
    (["--prefix-len", "-1"], "--prefix-len"),
    (["--num-prefixes", "-1"], "--num-prefixes"),
    (["--seed", "-1"], "--seed"),
    (["--port", "0"], "--port"),
    (["--goodput", "ttft:-5"], "--goodput"),
    (["--goodput", "tpot:nan"], "--goodput"),
    (["--ca-cert", "/nonexistent/ca.pem", "--base-url", "https://127.0.0.1:1"], "--ca-cert"),
    (["--insecure"], "--insecure"),
    (["--insecure", "--ca-cert", "x.pem", "--base-url", "https://127.0.0.1:1"], "--ca-cert"),
    (["--base-url", "ftp://bob:pw-3c1e@127.0.0.1:1"], "--base-url"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_value_is_one_line_before_any_work(args: list[str], needle: str, tmp_path: Path) -> None:
    base = [] if any(a in ("--base-url", "--port") for a in args) else ["--port", str(free_port())]
    r = subprocess.run([sys.executable, "-m", "loadgen.cli", *base, *args, "--tokenizer", "deepseek-r1",
                        "--output-dir", str(tmp_path / "out")],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert "pw-3c1e" not in r.stderr  # a password in a bad URL is not echoed
    assert not (tmp_path / "out").exists()  # nothing was done: not even the output folder
