"""`loadgen-launch` end to end against the real sim server, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import process
from tests.conftest import REPO_ROOT, free_port
from tests.launcher.conftest import kill_group, read_until, run_cli, start_cli, stop_cli, wait_or_dump

ROOT = REPO_ROOT


def test_foreground_serve_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "sim.log"
    proc = start_cli(
        tmp_path, "serve", "--engine", "sim", "--host", "127.0.0.1", "--port", str(port),
        "--log", str(log), "--ready-timeout", "60", "--startup-delay", "0.5",
    )
    server_pid = None
    try:
        out = read_until(proc, r"ready: http://127\.0\.0\.1:\d+ \(pid \d+", 60)
        server_pid = int(re.search(r"pid (\d+)", out).group(1))
        assert process.live_tree(server_pid, server_pid)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        proc.send_signal(signal.SIGINT)
        assert wait_or_dump(proc, 30) == 130
        assert process.live_tree(server_pid, server_pid) == set(), "Ctrl-C must stop the server"
        assert not process.port_in_use(port, "127.0.0.1")
    finally:
        stop_cli(proc, server_pid)


def test_ctrl_c_during_startup_stops_the_server(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "sim.log"
    proc = start_cli(
        tmp_path, "serve", "--engine", "sim", "--host", "127.0.0.1", "--port", str(port),
        "--log", str(log), "--startup-delay", "60",
    )
    try:
        # Wait until the sim process exists, then interrupt the wait for its readiness.
        deadline = time.monotonic() + 30
        pids: set[int] = set()
        while time.monotonic() < deadline and not pids:
            time.sleep(0.1)
            pids = {int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(int(p), str(port))}
        assert pids, "the sim server should be running"
        proc.send_signal(signal.SIGINT)
        assert wait_or_dump(proc, 30) == 130
        for pid in pids:
            assert not process._alive(pid), "the server must not outlive an interrupted start"
    finally:
        stop_cli(proc)


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"launcher.sim" in cmd and text.encode() in cmd


def test_detach_status_stop_round_trip(tmp_path: Path) -> None:
    port = free_port()
    res = run_cli(tmp_path, "serve", "--engine", "sim", "--host", "127.0.0.1", "--port", str(port), "--detach",
                  "--log", str(tmp_path / "sim.log"), "-q")
    state_file = tmp_path / "state" / f"{port}.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    try:
        assert res.returncode == 0, res.stderr
        assert state is not None and state["port"] == port and state["engine"] == "sim"
        assert process.live_tree(state["pgid"], state["pid"])
        res = run_cli(tmp_path, "status", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        line = json.loads(res.stdout.splitlines()[0])
        assert line["alive"] and line["health"] == 200 and line["port"] == port
        res = run_cli(tmp_path, "stop", "--port", str(port))
        assert res.returncode == 0, res.stderr
        assert f"stopped sim on port {port}" in res.stdout
        assert process.live_tree(state["pgid"], state["pid"]) == set()
        assert not state_file.exists()
        res = run_cli(tmp_path, "stop", "--port", str(port))
        assert res.returncode == 2 and "no state file" in res.stderr
    finally:
        if state:
            kill_group(state["pid"])


def test_status_reports_a_dead_server(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = process.ServerState(pid=dead.pid, pgid=dead.pid, port=1, host="127.0.0.1", engine="sim",
                                base_url="http://127.0.0.1:1", log_path="x.log", argv=[], started_at=time.time())
    process.write_state(tmp_path / "state" / "1.json", state)
    res = run_cli(tmp_path, "status")
    assert res.returncode == 1 and "DEAD" in res.stdout


def test_busy_port_is_refused(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        res = run_cli(tmp_path, "serve", "--engine", "sim", "--host", "127.0.0.1", "--port", str(port), "-q")
    assert res.returncode == 1
    assert f"port {port} is already in use" in res.stderr and "Traceback" not in res.stderr


def test_bad_engine_option_is_refused_before_start(tmp_path: Path) -> None:
    port = free_port()
    t0 = time.monotonic()
    res = run_cli(tmp_path, "serve", "--engine", "sim", "--host", "127.0.0.1", "--port", str(port),
                  "--log", str(tmp_path / "sim.log"), "--no-such-sim-flag", "1", "-q")
    assert time.monotonic() - t0 < 60
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()[-1]
    assert "--no-such-sim-flag is not a sim option" in err
    assert "Traceback" not in res.stderr


def test_plan_prints_commands_and_usage_errors(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "plan", "--engine", "sim", "--port", "8123", "--profile", "fast")
    assert res.returncode == 0
    assert re.search(r"-P -m launcher\.sim --host 127\.0\.0\.1 --port 8123 --profile fast", res.stdout)
    res = run_cli(tmp_path, "plan", "--engine", "vllm", "--preset", "no-such-preset")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "no-such-preset" in res.stderr
    res = run_cli(tmp_path, "stop")
    assert res.returncode == 2 and "no servers recorded" in res.stderr


def test_docker_serve_without_daemon_is_one_line(tmp_path: Path) -> None:
    if process.docker_problem() is None:
        pytest.skip("a Docker daemon runs here; this test is about its absence")
    port = free_port()
    res = run_cli(tmp_path, "serve", "--engine", "vllm", "--engine-version", "0.8.2", "--preset",
                  "deepseek-r1-fp8-tp8-h20", "--docker", "vllm/vllm-openai:v0.8.2", "--port", str(port), "-q")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert "docker" in last.lower() and "drop --docker" in last and "Traceback" not in res.stderr


def test_check_memory_plan_reproduces_the_sglang_verdicts(tmp_path: Path) -> None:
    base = ["check", "--engine", "sglang", "--engine-version", "0.4.5", "--model", "deepseek-r1", "--gpus", "8",
            "--gpu-memory", "95.58", "--context-len", "65536"]
    res = run_cli(tmp_path, *base)
    assert res.returncode == 1 and "FAILS" in res.stdout
    smallest = float(re.search(r"smallest --mem-fraction-static that starts: ([\d.]+)", res.stdout).group(1))
    assert 0.82 <= smallest <= 0.86
    res = run_cli(tmp_path, *base, "--mem-fraction", "0.90")
    assert res.returncode == 0 and "OK" in res.stdout


def test_server_dying_while_serving_is_reported(tmp_path: Path) -> None:
    port = free_port()
    proc = start_cli(
        tmp_path, "serve", "--engine", "sim", "--host", "127.0.0.1", "--port", str(port),
        "--log", str(tmp_path / "sim.log"), "-q",
    )
    server_pid = None
    try:
        out = read_until(proc, r"ready: .*\(pid \d+", 60)
        server_pid = int(re.search(r"pid (\d+)", out).group(1))
        os.kill(server_pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert "exited with code -9 while serving" in err and str(tmp_path / "sim.log") in err
    finally:
        stop_cli(proc, server_pid)
