"""The standing fault-injection suite: every way a server can misbehave is counted, never fatal.

Each case runs a real load point (the public ``loadgen.run_all`` API in process, or
the ``loadgen`` CLI as a subprocess) against a real server on 127.0.0.1 -- the small
misbehaving server of ``tests/servers/misbehaving.py``, or sim with its own fault
injection -- and checks the three things a user relies on: every request sent is
accounted for (completed + failed == sent), the failure is named by its kind, and
the result file is written.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console

import loadgen
from tests.conftest import REPO_ROOT
from tests.servers.misbehaving import MisbehavingServer

N = 4  # requests per case: enough to see each fault, few enough to keep the module fast


@pytest.fixture(scope="module")
def bad_server():
    with MisbehavingServer() as srv:
        yield srv


def run_point(base_url: str, out: Path, **overrides) -> tuple[dict, str]:
    """One load point through the public API; returns (the result file's content, the printed summary)."""
    settings = dict(base_url=base_url, backend="vllm", num_prompts=N, input_len=8, output_len=6,
                    tokenizer="deepseek-r1", output_dir=str(out), progress=False, timeout_s=5.0, grace_s=1.0)
    settings.update(overrides)
    cfg = loadgen.RunConfig.from_flat(**settings)
    buf = io.StringIO()
    loadgen.run_all(cfg, console=Console(file=buf, width=160), progress_console=Console(file=io.StringIO()))
    files = sorted(out.glob("*.json"))
    assert len(files) == 1, f"expected one result file in {out}, found {files}"
    return json.loads(files[0].read_text()), buf.getvalue()


def accounted(res: dict, sent: int = N) -> None:
    assert res["completed"] + res["failed"] == sent, (res["completed"], res["failed"])
    assert sum(res["errors_by_kind"].values()) == res["failed"], res["errors_by_kind"]


# mode, error kind every request must end with (None: they all succeed), extra options
CASES = [
    ("http_429", "http_429", {}),
    ("http_500", "http_500", {}),
    ("reset_before", "reset_before_first_byte", {}),
    ("reset_mid", "reset_mid_stream", {}),
    ("stall", "timeout", {"timeout_s": 1.0}),
    ("malformed", "malformed", {}),
    ("invalid_utf8", "malformed", {}),
    ("bad_chunk", "malformed", {}),
    ("close_after_headers", "reset_mid_stream", {}),
    # these two take time to send (10 MB in one event; one byte at a time): no timeout cuts them short
    ("big_event", None, {"timeout_s": 60.0}),
    ("slowloris", None, {"timeout_s": 60.0}),
    ("invisible", None, {}),
    ("usage_only", None, {}),
]


@pytest.mark.parametrize("mode,kind,extra", CASES, ids=[c[0] for c in CASES])
def test_fault_is_counted_by_kind(bad_server: MisbehavingServer, tmp_path: Path, mode: str, kind: str | None,
                                  extra: dict) -> None:
    bad_server.set(mode)
    t0 = time.monotonic()
    res, printed = run_point(bad_server.base_url, tmp_path, **extra)
    accounted(res)
    attempts = 3 if mode == "reset_before" else 1  # a reset before any byte is retried twice
    assert bad_server.streams == 1 + attempts * N  # the pre-flight test request, then the point
    if kind is None:
        assert res["completed"] == N and res["failed"] == 0, res["errors_by_kind"]
        assert res["output_lens"] == [6] * N  # every token counted, visible or not
    else:
        assert res["errors_by_kind"] == {kind: N}, res["errors_by_kind"]
        assert kind in printed  # the summary names the kind
    assert time.monotonic() - t0 < 120  # no case waits for the default timeout (600 s)


def test_resets_before_the_first_byte_are_retried_and_the_retries_printed(bad_server: MisbehavingServer,
                                                                         tmp_path: Path) -> None:
    bad_server.set("reset_before")
    res, printed = run_point(bad_server.base_url, tmp_path)
    accounted(res)
    assert res["retries"] == 2 * N  # each request: the first try and two retries on fresh connections
    assert bad_server.streams == 1 + 3 * N
    assert re.search(rf"Retries after a connection reset +{2 * N}\b", printed), printed


def test_a_key_echoed_in_an_error_body_is_masked(bad_server: MisbehavingServer, tmp_path: Path) -> None:
    key = "sk-echo-7f3a9c"
    bad_server.set("echo_auth")
    res, printed = run_point(bad_server.base_url, tmp_path, api_key=key, save_requests=True)
    accounted(res)
    assert res["errors_by_kind"] == {"http_401": N}
    assert bad_server.seen_auth[-1] == f"Bearer {key}"  # the key was sent ...
    for path in tmp_path.iterdir():  # ... and is in no file written
        assert key not in path.read_text(errors="replace"), path.name
    assert key not in printed
    assert "Bearer ***" in json.dumps(res["errors"])


def _wait_running(base_url: str, at_least: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(base_url + "/sim/stats", timeout=2) as resp:
            if json.loads(resp.read()).get("running", 0) >= at_least:
                return
        time.sleep(0.05)
    raise AssertionError(f"the sim never had {at_least} requests running")


def test_server_killed_mid_run(sim_server, tmp_path: Path) -> None:
    """SIGKILL of the server while every request is streaming: all are counted, the file is written."""
    profile = tmp_path / "slow.json"
    profile.write_text(json.dumps({"base_ms": 20.0, "decode_seq_ms": 0.0, "prefill_token_ms": 0.0,
                                   "prefill_step_ms": 0.0, "max_num_seqs": 64, "max_batched_tokens": 65536,
                                   "kv_tokens": 10_000_000}))
    srv = sim_server("--profile", str(profile))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "loadgen.cli", "--base-url", srv.base_url, "--num-prompts", "6", "--input-len", "8",
           "--output-len", "400", "--tokenizer", "deepseek-r1", "--no-progress", "--output-dir", str(out),
           "--timeout", "20"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_running(srv.base_url, 6)
        srv.proc.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in stderr, stderr
    (path,) = out.glob("*.json")
    res = json.loads(path.read_text())
    accounted(res, 6)
    assert res["failed"] == 6 and set(res["errors_by_kind"]) == {"reset_mid_stream"}, res["errors_by_kind"]


def test_sims_own_faults_through_the_cli(sim_server, tmp_path: Path) -> None:
    """Sim's fault injection, every kind at once, through the real CLI: each injected kind is
    reported under its name, and the counts agree with what the sim says it injected."""
    srv = sim_server("--fault-429", "0.15", "--fault-500", "0.15", "--fault-reset-mid", "0.15",
                     "--fault-malformed", "0.15", "--fault-stall", "0.3", "--stall-ms", "3000", "--fault-seed", "3")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "loadgen.cli", "--base-url", srv.base_url, "--num-prompts", "40",
                        "--concurrency", "8", "--input-len", "8", "--output-len", "8", "--tokenizer", "deepseek-r1",
                        "--no-progress", "--output-dir", str(out), "--timeout", "1.5"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    (path,) = out.glob("*.json")
    res = json.loads(path.read_text())
    accounted(res, 40)
    with urllib.request.urlopen(srv.base_url + "/sim/stats", timeout=2) as resp:
        injected = json.loads(resp.read())["faults_injected"]
    kinds = res["errors_by_kind"]
    assert set(kinds) <= {"http_429", "http_500", "reset_mid_stream", "malformed", "timeout"}, kinds
    # the pre-flight request may have drawn a fault too, so loadgen sees at most what the sim injected
    for sim_kind, ours in (("429", "http_429"), ("500", "http_500"), ("malformed", "malformed")):
        assert 0 < kinds.get(ours, 0) <= injected.get(sim_kind, 0), (kinds, injected)
    assert 0 < kinds.get("timeout", 0) <= injected.get("stall", 0), (kinds, injected)
