"""Lifecycle against real processes: a small fake engine written to tmp_path.

The fake engine behaves like the real ones where it matters to the launcher: it
prints a shard-loading progress bar with carriage returns, opens its HTTP port
only after "loading", spawns a worker child (like vLLM's engine core), can print
a fatal line and keep running (the case a launcher must not wait out), and can
ignore SIGTERM (so the SIGKILL path is exercised).
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from launcher import process
from launcher.lifecycle import LaunchError, Server, start_plan
from launcher.readiness import ReadinessSpec
from tests.conftest import free_port

FAKE_ENGINE = textwrap.dedent(
    '''
    import argparse, http.server, os, signal, subprocess, sys, threading, time
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--fatal", default="")
    p.add_argument("--exit", type=int, default=None)
    p.add_argument("--ready-line", default="Starting vLLM API server on http://127.0.0.1:{port}")
    p.add_argument("--health-before-ready", action="store_true")
    p.add_argument("--ignore-term", action="store_true")
    a = p.parse_args()
    if a.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time, signal; signal.signal(signal.SIGTERM, signal.SIG_IGN) if %r else None; time.sleep(600)" % a.ignore_term])
    print("worker pid", child.pid, flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        ready = False
        def do_GET(self):
            code = 200 if (self.path == "/health" and (H.ready or a.health_before_ready)) or (self.path == "/health_generate" and H.ready) else 503
            self.send_response(code); self.send_header("Content-Length", "0"); self.end_headers()
        def log_message(self, *args): pass
    if a.health_before_ready:
        srv = http.server.HTTPServer(("127.0.0.1", a.port), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    for i in range(1, a.shards + 1):
        time.sleep(a.delay / a.shards)
        sys.stderr.write("\\rLoading safetensors checkpoint shards: %d%% Completed | %d/%d [00:01<00:00]" % (100 * i // a.shards, i, a.shards))
        sys.stderr.flush()
    sys.stderr.write("\\n")
    if a.fatal:
        print(a.fatal, flush=True)
        time.sleep(600)
    if a.exit is not None:
        print("error: something went wrong", flush=True)
        sys.exit(a.exit)
    if not a.health_before_ready:
        srv = http.server.HTTPServer(("127.0.0.1", a.port), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    H.ready = True
    print(a.ready_line.format(port=a.port), flush=True)
    while True:
        time.sleep(1)
    '''
)


@dataclass
class FakePlan:
    """The fields of launcher.plan.Plan that the lifecycle reads."""

    argv: list[str]
    port: int
    host: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    docker_argv: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    readiness: ReadinessSpec = field(default_factory=lambda: ReadinessSpec(health_path="/health"))


@pytest.fixture
def fake(tmp_path: Path):
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)

    def make(*args: str, readiness: ReadinessSpec | None = None) -> FakePlan:
        port = free_port()
        return FakePlan([sys.executable, str(script), "--port", str(port), *args], port,
                        readiness=readiness or ReadinessSpec(health_path="/health"))

    return make


def assert_gone(server_or_pgid: Server | int, pid: int | None = None) -> None:
    if isinstance(server_or_pgid, Server):
        pgid, pid = server_or_pgid.pgid, server_or_pgid.pid
    else:
        pgid = server_or_pgid
    assert process.live_tree(pgid, pid) == set(), "a server process survived"


def worker_pid(log: Path) -> int:
    for line in log.read_text().splitlines():
        if line.startswith("worker pid"):
            return int(line.split()[-1])
    raise AssertionError("no worker pid in log")


def test_launch_ready_stop_leaves_nothing(fake, tmp_path: Path) -> None:
    log = tmp_path / "srv.log"
    seen = []
    server = start_plan(fake("--delay", "0.4"), engine="sim", log_path=log, ready_timeout_s=30,
                        on_progress=lambda p: seen.append((p.phase, p.shards_done)))
    try:
        assert server.alive()
        worker = worker_pid(log)
        assert worker in process.live_tree(server.pgid, server.pid)
        assert ("loading weights", 4) in seen or any(s == 4 for _, s in seen)
        assert seen[-1][0] == "ready"
    finally:
        server.stop(timeout_s=5)
    assert_gone(server)
    assert not os.path.exists(f"/proc/{worker}") or process._proc_stat(worker)[0] == "Z"
    server.stop()  # idempotent


def test_context_manager_and_sigkill_escalation(fake, tmp_path: Path) -> None:
    with start_plan(fake("--ignore-term"), engine="sim", log_path=tmp_path / "l.log", ready_timeout_s=30) as server:
        server.stop(timeout_s=0.5)  # SIGTERM is ignored by both processes: SIGKILL must finish it
    assert_gone(server)


def test_busy_port_refused_before_start(fake, tmp_path: Path) -> None:
    plan = fake()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", plan.port))
        holder.listen()
        t0 = time.monotonic()
        with pytest.raises(LaunchError, match=f"port {plan.port} is already in use"):
            start_plan(plan, engine="sim", log_path=tmp_path / "l.log", ready_timeout_s=30)
        assert time.monotonic() - t0 < 15  # refused up front, not at the 30 s timeout
    assert not (tmp_path / "l.log").exists(), "nothing may be started for a busy port"


def test_fatal_signature_fails_fast_and_stops_everything(fake, tmp_path: Path) -> None:
    log = tmp_path / "l.log"
    plan = fake("--fatal", "RuntimeError: NCCL Error 1: unhandled cuda error (run with NCCL_DEBUG=INFO for details)")
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        start_plan(plan, engine="vllm", log_path=log, ready_timeout_s=120)
    assert time.monotonic() - t0 < 15, "the wait must end on the fatal line, not at the timeout"
    msg = str(info.value)
    assert "NCCL_DEBUG=INFO" in msg and "#13294" in msg and "\n" not in msg
    assert info.value.signature == "nccl_unhandled_cuda_error"
    worker = worker_pid(log)
    assert not os.path.exists(f"/proc/{worker}") or process._proc_stat(worker)[0] == "Z"


def test_process_exit_is_diagnosed(fake, tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="exited with code 3.*something went wrong"):
        start_plan(fake("--exit", "3"), engine="sim", log_path=tmp_path / "l.log", ready_timeout_s=60)
    worker = worker_pid(tmp_path / "l.log")
    assert not os.path.exists(f"/proc/{worker}") or process._proc_stat(worker)[0] == "Z"


def test_readiness_waits_for_slow_start(fake, tmp_path: Path) -> None:
    t0 = time.monotonic()
    with start_plan(fake("--delay", "2"), engine="sim", log_path=tmp_path / "l.log", ready_timeout_s=30) as server:
        assert time.monotonic() - t0 >= 2
        assert server.progress is not None and server.progress.shards_done == 4


def test_timeout_stops_the_server(fake, tmp_path: Path) -> None:
    log = tmp_path / "l.log"
    with pytest.raises(LaunchError, match="not ready after 1 s"):
        start_plan(fake("--delay", "30"), engine="sim", log_path=log, ready_timeout_s=1)
    worker = worker_pid(log)
    assert not os.path.exists(f"/proc/{worker}") or process._proc_stat(worker)[0] == "Z"


def test_health_that_lies_needs_the_ready_line(fake, tmp_path: Path) -> None:
    """SGLang 0.4.x: /health is 200 during loading; only the log line (then /health_generate) means ready."""
    spec = ReadinessSpec(health_path="/health_generate", ready_log=["The server is fired up and ready to roll!"],
                         health_meaningful=False)
    plan = fake("--delay", "1.5", "--health-before-ready", "--ready-line", "The server is fired up and ready to roll!",
                readiness=spec)
    t0 = time.monotonic()
    with start_plan(plan, engine="sglang", log_path=tmp_path / "l.log", ready_timeout_s=30):
        assert time.monotonic() - t0 >= 1.5


def test_missing_executable_is_one_line(tmp_path: Path) -> None:
    plan = FakePlan(["/nonexistent/vllm", "serve"], free_port())
    with pytest.raises(LaunchError, match="cannot start '/nonexistent/vllm'"):
        start_plan(plan, engine="vllm", log_path=tmp_path / "l.log")


def test_broken_checkpoint_refused_before_start(fake, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "model.safetensors.index.json").write_text('{"weight_map": {"w": "model-00001-of-00001.safetensors"}}')
    with pytest.raises(LaunchError, match="model-00001-of-00001.safetensors: missing"):
        start_plan(fake(), engine="vllm", model=str(ck), log_path=tmp_path / "l.log")
    assert not (tmp_path / "l.log").exists()


def test_docker_mode_without_daemon_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    plan = FakePlan(["vllm", "serve", "/mnt/models/m"], port,
                    docker_argv=["docker", "run", "--rm", "--name", "lg-test", "img", "vllm", "serve"])
    problem = process.docker_problem()
    if problem is None:
        pytest.skip("a Docker daemon runs here; this test is about its absence")
    with pytest.raises(LaunchError, match="Docker|docker"):
        start_plan(plan, engine="vllm", log_path=tmp_path / "l.log")
    assert not (tmp_path / "l.log").exists()


def test_docker_helpers() -> None:
    from launcher.lifecycle import _host_model_dir

    argv = ["docker", "run", "-v", "/ssd1/models:/mnt/models", "--name", "vllm-r1", "img"]
    assert process.docker_container_name(argv) == "vllm-r1"
    assert _host_model_dir("/mnt/models/DeepSeek-R1", argv) == "/ssd1/models/DeepSeek-R1"
    assert _host_model_dir("/elsewhere/m", argv) is None


def _fake_nvidia_smi(tmp_path: Path, mib: int, count: int = 8) -> str:
    """A stand-in nvidia-smi on PATH that reports ``count`` GPUs of ``mib`` MiB (as H20-96GB does: 97871)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + "".join(f"echo {mib}\n" for _ in range(count)))
    exe.chmod(0o755)
    return f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"


def test_memory_plan_refuses_sglang_default_fraction_on_h20(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The field report's failure, predicted before any weight is loaded."""
    from launcher.plan import build_plan

    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, 97871))
    port = free_port()
    plan = build_plan("sglang", version="0.4.5", model="/mnt/models/DeepSeek-R1", port=port, host="127.0.0.1",
                      extra_args=["--tp-size", "8", "--trust-remote-code", "--context-length", "65536"])
    with pytest.raises(LaunchError) as info:
        start_plan(plan, engine="sglang", log_path=tmp_path / "l.log")
    assert info.value.signature == "memory_plan"
    assert "--mem-fraction-static that starts is 0.84" in str(info.value)
    assert not (tmp_path / "l.log").exists()

    ok_plan = build_plan("sglang", version="0.4.5", model="/mnt/models/DeepSeek-R1", port=port, host="127.0.0.1",
                         extra_args=["--tp-size", "8", "--mem-fraction-static", "0.90", "--context-length", "65536"])
    from launcher.lifecycle import check_memory_or_raise

    mplan = check_memory_or_raise(ok_plan, None)
    assert mplan is not None and mplan.ok and mplan.kv_tokens > 0


def test_an_earlier_run_in_the_same_log_is_not_diagnosed(fake, tmp_path: Path) -> None:
    """A resumed benchmark appends to the same server.log; only this start's lines count."""
    log = tmp_path / "server.log"
    log.write_text("RuntimeError: NCCL Error 1: unhandled cuda error\n")
    with start_plan(fake(), engine="vllm", log_path=log, ready_timeout_s=30) as server:
        assert server.alive()
    text = log.read_text()
    assert text.startswith("RuntimeError: NCCL") and "=== loadgen-launch " in text


def test_foreign_host_address_is_named(fake, tmp_path: Path) -> None:
    plan = fake()
    plan.host = "198.51.100.77"  # TEST-NET-2: never an address of this machine; nothing is sent to it
    with pytest.raises(LaunchError, match="--host 198.51.100.77 is not an address of this machine"):
        start_plan(plan, engine="sim", log_path=tmp_path / "l.log")
