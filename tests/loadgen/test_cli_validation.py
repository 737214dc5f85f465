"""Every numeric option is checked before any work: one line on stderr, exit code 2, no traceback.

Bad values run through the real command in this process (click's test runner calls the
same entry point as the console script, error shell included), with no server listening:
a value that slipped past validation would reach the pre-flight checks and fail
differently (or, as ``--grace -1`` once did, with a traceback after the prompts were
built). The memory-bound refusals run as a subprocess, as a user meets them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from loadgen.cli import main
from tests.conftest import REPO_ROOT, free_port

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
    (["--num-prompts", str(2**63)], "--num-prompts"),
    (["--num-prompts", "2000000000"], "--num-prompts"),
    (["--rate", "1e300", "--duration", "1e10"], "--duration"),  # rate x duration: infinitely many requests
    (["--rate", "1e6", "--duration", "1e5"], "--duration"),  # 10^11 requests
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
    r = CliRunner().invoke(main, [*base, *args, "--tokenizer", "deepseek-r1", "--output-dir", str(tmp_path / "out")])
    lines = r.stderr.strip().splitlines()
    assert isinstance(r.exception, SystemExit) and r.exit_code == 2, r.stderr  # exited, not raised
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert "pw-3c1e" not in r.stderr  # a password in a bad URL is not echoed
    assert not (tmp_path / "out").exists()  # nothing was done: not even the output folder


def test_a_prompt_set_that_cannot_fit_in_memory_is_refused_before_it_is_built(sim_fast, tmp_path: Path) -> None:
    from loadgen.budget import available_bytes, prompt_bytes

    count = 900_000_000  # within the hard bound, far beyond any machine's memory at 4,096 tokens each
    assert prompt_bytes(count, 4096) > (available_bytes() or 0)
    r = subprocess.run([sys.executable, "-m", "loadgen.cli", "--base-url", sim_fast.base_url, "--num-prompts",
                        str(count), "--input-len", "4096", "--output-len", "16", "--tokenizer", "deepseek-r1",
                        "--output-dir", str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "900,000,000 prompts" in lines[0] and "GiB available" in lines[0] and "--num-prompts" in lines[0]


def test_the_memory_bound_counts_the_average_length_and_the_warm_up(sim_fast, tmp_path: Path) -> None:
    """--random-range-ratio draws around --input-len: the set is refused on its mean length, warm-up included."""
    from loadgen.budget import available_bytes, prompt_bytes

    avail = available_bytes() or 0
    count = 2 * (avail // prompt_bytes(1, 1000))  # twice what the machine holds at 1,000 tokens each on average
    assert prompt_bytes(count, 10) < avail  # at the shortest length drawn it would have looked small
    r = subprocess.run([sys.executable, "-m", "loadgen.cli", "--base-url", sim_fast.base_url, "--num-prompts",
                        str(count - 5), "--warmup", "5", "--input-len", "1000", "--random-range-ratio", "0.99",
                        "--output-len", "16", "--tokenizer", "deepseek-r1", "--output-dir", str(tmp_path / "out")],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"{count:,} prompts of 1,000 tokens on average" in lines[0] and "GiB available" in lines[0]


def test_the_memory_bound_is_a_lower_bound_of_what_prompts_hold() -> None:
    from loadgen.budget import too_many_prompts

    assert too_many_prompts(1000, 1024, 10 * 2**20) is None  # 7.5 MB of prompts in 10 MiB
    assert too_many_prompts(10**6, 1024, 2**30) is not None  # 7 GB in 1 GiB: no
    assert too_many_prompts(10**9, 1024, None) is None  # unknown memory: no refusal on a guess
