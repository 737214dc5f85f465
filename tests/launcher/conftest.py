"""Helpers shared by this folder's tests."""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher import process
from tests.conftest import REPO_ROOT


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LOADGEN_STATE_DIR"] = str(tmp_path / "state")
    env["PYTHONFAULTHANDLER"] = "1"  # a CLI that hangs can be asked for its stacks (see wait_or_dump)
    return env


def run_cli(tmp_path: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT, env=cli_env(tmp_path))


def start_cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    """``loadgen-launch ARGS`` in the background, its output piped (see :func:`read_until`)."""
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=cli_env(tmp_path))


def stop_cli(proc: subprocess.Popen, server_pid: int | None = None) -> None:
    """Test cleanup: the CLI if it still runs, then the server it started (once its pid is known)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if server_pid:
        kill_group(server_pid)


def wait_or_dump(proc: subprocess.Popen, timeout: float) -> int:
    """The CLI's exit code; if it is still running after ``timeout``, fail with the stack of every thread
    (SIGABRT makes Python's fault handler print them) and what it wrote to stderr, so a hang seen once in a
    long suite can be read, not guessed at."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        masks = _signal_masks(proc.pid)
        proc.send_signal(signal.SIGABRT)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            err = "(no output: the process did not end on SIGABRT)"
        raise AssertionError(f"still running {timeout:g} s after it was told to stop ({masks}; this process: "
                             f"{_signal_masks(os.getpid())}); stderr:\n{err[-6000:]}") from None


def _signal_masks(pid: int) -> str:
    """The blocked, ignored and caught signal masks of ``pid``: a signal that does nothing shows here."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "gone"
    return " ".join(line.replace("\t", "") for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))


def kill_group(pid: int) -> None:
    """Test cleanup for a server whose pid we learned; harmless when it is already gone."""
    process.stop_tree(pid, pid, timeout_s=2)


def read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen += line
            if re.search(pattern, seen):
                return seen
        elif proc.poll() is not None:
            break
    err = ""
    if proc.poll() is not None and proc.stderr is not None:
        err = f"; it exited with {proc.returncode}, stderr: {proc.stderr.read()[-2000:]!r}"
    raise AssertionError(f"no {pattern!r} within {timeout}s; got {seen!r}{err}")


PROBES = {
    ("vllm", "0.33.0"): (
        "-tp 8 --tp 8 --tensor_parallel_size 8 --tensor-parallel 8 --no-enable-chunked-prefill "
        "--disable-chunked-prefill --enable-prefix-caching --no-enable-prefix-caching --max-seq-len-to-capture 100 "
        "--kv-cache-dtype fp8 --enable-expert-parallel --data-parallel-size 2 --disable-log-requests "
        "--gpu-memory-utilization 0.95 --max-model-len 4k "
        """--speculative-config '{"method":"deepseek_mtp","num_speculative_tokens":1}' --num-speculative-tokens 1 """
        """--compilation-config '{"cudagraph_capture_sizes":[1,2]}' --reasoning-parser deepseek_r1""",
        {"--tp", "--max-seq-len-to-capture", "--num-speculative-tokens"},
    ),
    ("sglang", "0.4.5"): (
        "--tp 8 --tp-size 8 --tensor_parallel_size 8 --mem_fraction_static 0.9 --model /x --model-path /x "
        "--enable-dp-attention --dp 8 --dp-size 8 --ep-size 8 --enable-ep-moe --kv-cache-dtype fp8_e4m3 "
        "--speculative-algorithm EAGLE --speculative-algorithm NEXTN --nnodes 2 --node-rank 0 "
        "--dist-init-addr 10.0.0.1:5000 --disable-cuda-graph --cuda-graph-max-bs 64 --enable-torch-compile "
        "--attention-backend flashinfer --max-running-requests 64",
        {"--tensor_parallel_size", "--mem_fraction_static"},
    ),
    ("sglang", "0.5.23"): (
        "--tp 8 --tp-size 8 --tensor_parallel_size 8 --mem_fraction_static 0.9 --model /x --model-path /x "
        "--enable-dp-attention --dp 8 --dp-size 8 --ep-size 8 --enable-ep-moe --kv-cache-dtype fp8_e4m3 "
        "--speculative-algorithm EAGLE --speculative-algorithm NEXTN --nnodes 2 --node-rank 0 "
        "--dist-init-addr 10.0.0.1:5000 --disable-cuda-graph --cuda-graph-max-bs 64 --enable-torch-compile "
        "--attention-backend flashinfer --max-running-requests 64",
        {"--tensor_parallel_size", "--mem_fraction_static", "--enable-ep-moe", "--cuda-graph-max-bs"},
    ),
}


def chunks(line: str) -> list[list[str]]:
    out: list[list[str]] = []
    for tok in shlex.split(line):
        if tok.startswith("-") and not tok.lstrip("-").isdigit():
            out.append([tok])
        else:
            out[-1].append(tok)
    return out
