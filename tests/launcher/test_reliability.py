"""`loadgen-launch` under bad input and hard stops: every failure names its real cause.

Real processes only: the sim, and a small fake ``vllm`` executable (written to
tmp_path) that serves ``/health`` on 127.0.0.1 and accepts any flag, so secret
flags and an engine that ignores SIGTERM can be exercised without a real engine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from launcher import process
from tests.conftest import REPO_ROOT, free_port
from tests.launcher.conftest import (
    cli_env,
    kill_group,
    read_until,
    run_cli,
    start_cli,
    stop_cli,
    wait_or_dump,
)

# Both stand-in engines answer 200 on every GET (their health and readiness paths) on 127.0.0.1:port.
HEALTH_SERVER = """
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", port), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
"""

FAKE_VLLM = textwrap.dedent(
    """
    import http.server, os, signal, sys, threading, time
    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    if os.environ.get("FAKE_ENGINE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    """
) + HEALTH_SERVER + textwrap.dedent(
    """
    print("Starting vLLM API server on http://127.0.0.1:%d" % port, flush=True)
    while True:
        time.sleep(1)
    """
)


def fake_vllm(tmp_path: Path) -> Path:
    exe = tmp_path / "bin" / "vllm"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(f"#!{sys.executable}\n{FAKE_VLLM}")
    exe.chmod(0o755)
    return exe


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.live_tree(pid, pid):
            return True
        time.sleep(0.1)
    return False


# --- one-line errors that name the real cause ----------------------------------------


def test_unresolvable_host_is_named_not_a_busy_port(tmp_path: Path) -> None:
    port = free_port()
    res = run_cli(tmp_path, "serve", "--engine", "sim", "--host", "no-such-host.invalid", "--port", str(port),
                  "--log", str(tmp_path / "sim.log"), "-q")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert "--host no-such-host.invalid" in last and "already in use" not in last
    assert "Traceback" not in res.stderr


def test_unwritable_log_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder is expected")
    log = blocker / "sim.log"
    res = run_cli(tmp_path, "serve", "--engine", "sim", "--host", "127.0.0.1", "--port", str(free_port()),
                  "--log", str(log), "-q")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert str(log) in last and "--log" in last and "cannot start" not in last
    assert "Traceback" not in res.stderr


def test_unknown_sim_flag_is_named_before_anything_starts(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "sim.log"
    res = run_cli(tmp_path, "serve", "--engine", "sim", "--host", "127.0.0.1", "--port", str(port),
                  "--log", str(log), "--profle", "fast", "-q")
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert "--profle" in last and "did you mean --profile" in last
    assert not log.exists(), "nothing may be started for a command line the sim would refuse"
    res = run_cli(tmp_path, "plan", "--engine", "sim", "--fault-429", "2")
    assert res.returncode == 2 and "--fault-429" in res.stderr and "probability" in res.stderr


def test_explicit_python_is_never_ignored(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "plan", "--engine", "vllm", "--preset", "tiny-cpu", "--python", "/opt/py/bin/python",
                  "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["argv"][0] == "/opt/py/bin/python", "--python must win over the preset's engine"
    for engine in ("vllm", "sim"):
        args = ("--preset", "tiny-cpu") if engine == "vllm" else ()
        res = run_cli(tmp_path, "serve", "--engine", engine, *args, "--python", "/nonexistent/python",
                      "--port", str(free_port()), "--log", str(tmp_path / f"{engine}.log"),
                      "--ready-timeout", "5", "-q")
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "--python /nonexistent/python" in lines[0]
        assert not (tmp_path / f"{engine}.log").exists()


# --- secrets --------------------------------------------------------------------------


def test_mask_helpers_hide_secret_values_only() -> None:
    from launcher.redact import SECRET, mask_argv, mask_env, mask_url

    argv = ["vllm", "serve", "/m", "--api-key", "sk-1", "--api_key=sk-2", "--hf-token", "hf_3",
            "--max-num-batched-tokens", "8192", "--tokenizer", "tok", "-e", "HF_TOKEN=hf_4", "-e", "HOST_IP=1.2.3.4",
            "--base-url", "http://user:pw5@example.org:8000/v1"]
    assert mask_argv(argv) == ["vllm", "serve", "/m", "--api-key", SECRET, f"--api_key={SECRET}", "--hf-token", SECRET,
                               "--max-num-batched-tokens", "8192", "--tokenizer", "tok", "-e", f"HF_TOKEN={SECRET}",
                               "-e", "HOST_IP=1.2.3.4", "--base-url", f"http://{SECRET}@example.org:8000/v1"]
    assert mask_env({"HF_TOKEN": "a", "OPENAI_API_KEY": "b", "VLLM_CPU_KVCACHE_SPACE": "1"}) == {
        "HF_TOKEN": SECRET, "OPENAI_API_KEY": SECRET, "VLLM_CPU_KVCACHE_SPACE": "1"}
    assert mask_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


def test_engine_api_key_is_masked_on_screen_in_log_and_state(tmp_path: Path) -> None:
    exe = fake_vllm(tmp_path)
    port = free_port()
    log = tmp_path / "vllm.log"
    secret = "sk-very-secret-4711"
    res = run_cli(tmp_path, "serve", "--engine", "vllm", "--engine-version", "0.33.0", "--engine-bin", str(exe),
                  "--model", "/m", "--host", "127.0.0.1", "--port", str(port), "--log", str(log), "--no-preflight",
                  "--detach", "--ready-timeout", "60", "--api-key", secret)
    state_file = tmp_path / "state" / f"{port}.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    try:
        assert res.returncode == 0, res.stderr
        assert secret not in res.stdout + res.stderr and "VLLM_API_KEY='***'" in res.stderr, res.stderr
        assert secret not in log.read_text()
        assert secret not in state_file.read_text() and "--api-key" not in state["argv"]
        res = run_cli(tmp_path, "plan", "--engine", "vllm", "--engine-version", "0.33.0", "--model", "/m",
                      "--api-key", secret, "--json")
        assert res.returncode == 0 and secret not in res.stdout and "VLLM_API_KEY" in res.stdout
        # The engine got the real key, in its environment (vLLM reads VLLM_API_KEY), not on its command line,
        # which any user can read in ps and which engines echo into their logs.
        cmdline = Path(f"/proc/{state['pid']}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{state['pid']}/environ").read_bytes().split(b"\0")
        assert secret.encode() not in b" ".join(cmdline) and f"VLLM_API_KEY={secret}".encode() in environ
    finally:
        if state:
            run_cli(tmp_path, "stop", "--port", str(port), "--timeout", "5")
            kill_group(state["pid"])


# --- a foreground serve killed with SIGKILL --------------------------------------------


def serve_sim(tmp_path: Path) -> tuple[int, subprocess.Popen]:
    """A foreground ``serve --engine sim`` on a free port: the port and the launcher's process."""
    port = free_port()
    return port, start_cli(tmp_path, "serve", "--engine", "sim", "--host", "127.0.0.1", "--port", str(port),
                           "--log", str(tmp_path / "sim.log"), "-q")


def ready_pid(proc: subprocess.Popen) -> int:
    """Wait for a foreground serve's ready line; the engine's pid it names."""
    return int(re.search(r"pid (\d+)", read_until(proc, r"ready: .*\(pid \d+", 60)).group(1))


def test_sigkill_of_foreground_serve_leaves_no_hidden_server(tmp_path: Path) -> None:
    port, proc = serve_sim(tmp_path)
    server_pid = None
    try:
        server_pid = ready_pid(proc)
        res = run_cli(tmp_path, "status", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads(res.stdout.splitlines()[0])["pid"] == server_pid, "a foreground server is visible"
        proc.kill()
        proc.wait(timeout=10)
        assert wait_gone(server_pid, 20), "the engine must not outlive a SIGKILLed foreground launcher"
        res = run_cli(tmp_path, "status")
        assert res.returncode == 1 and "DEAD" in res.stdout
        res = run_cli(tmp_path, "stop", "--port", str(port))
        assert res.returncode == 0, res.stderr
        assert not (tmp_path / "state" / f"{port}.json").exists()
    finally:
        stop_cli(proc, server_pid)


def test_orphan_that_ignores_sigterm_is_found_and_stopped(tmp_path: Path) -> None:
    exe = fake_vllm(tmp_path)
    port = free_port()
    env = {**cli_env(tmp_path), "FAKE_ENGINE_IGNORE_TERM": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "serve", "--engine", "vllm", "--engine-version",
                             "0.33.0", "--engine-bin", str(exe), "--model", "/m", "--host", "127.0.0.1", "--port",
                             str(port), "--log", str(tmp_path / "vllm.log"), "--no-preflight", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
    server_pid = None
    try:
        server_pid = ready_pid(proc)
        proc.kill()
        proc.wait(timeout=10)
        time.sleep(1)
        assert process.live_tree(server_pid, server_pid), "this engine ignores SIGTERM, so it outlives the launcher"
        res = run_cli(tmp_path, "status", "--json")
        line = json.loads(res.stdout.splitlines()[0])
        assert line["pid"] == server_pid and line["alive"] and line["health"] == 200
        res = run_cli(tmp_path, "stop", "--port", str(port), "--timeout", "1")
        assert res.returncode == 0, res.stderr
        assert process.live_tree(server_pid, server_pid) == set()
        assert not process.port_in_use(port, "127.0.0.1")
    finally:
        stop_cli(proc, server_pid)


def test_stop_of_a_foreground_server_ends_its_launcher_cleanly(tmp_path: Path) -> None:
    port, proc = serve_sim(tmp_path)
    server_pid = None
    try:
        server_pid = ready_pid(proc)
        res = run_cli(tmp_path, "stop", "--port", str(port))
        assert res.returncode == 0, res.stderr
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "loadgen-launch stop" in err
    finally:
        stop_cli(proc, server_pid)


# --- the working directory cannot shadow our packages ----------------------------------


def test_serve_from_a_folder_with_a_launcher_subfolder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "launcher").mkdir(parents=True)
    (work / "launcher" / "__init__.py").write_text("")
    port = free_port()
    env = cli_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    res = subprocess.run([sys.executable, "-P", "-m", "launcher.cli", "serve", "--engine", "sim", "--port", str(port),
                          "--log", str(tmp_path / "sim.log"), "--detach", "-q"],
                         capture_output=True, text=True, timeout=90, cwd=work, env=env)
    state_file = tmp_path / "state" / f"{port}.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    try:
        assert res.returncode == 0, res.stderr
        assert state is not None
    finally:
        if state:
            kill_group(state["pid"])


def test_bench_child_is_not_shadowed_by_the_working_directory(tmp_path: Path) -> None:
    from orchestrator.bench import EngineTarget, Point, loadgen_argv

    work = tmp_path / "work"
    (work / "loadgen").mkdir(parents=True)
    (work / "loadgen" / "__init__.py").write_text("")
    (work / "loadgen" / "cli.py").write_text("def main():\n    print('SHADOWED')\n    raise SystemExit(99)\n")
    argv = loadgen_argv(Point(1, 8, 8, 1, 0), "http://127.0.0.1:1", EngineTarget("sim", "x"), tmp_path / "out",
                        False, "openai", "deepseek-r1", "quick")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=work)
    assert "SHADOWED" not in res.stdout and res.returncode != 99


# --- sim defaults -----------------------------------------------------------------------


def test_sim_binds_the_loopback_unless_asked(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "plan", "--engine", "sim", "--json")
    argv = json.loads(res.stdout)["argv"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    res = run_cli(tmp_path, "plan", "--engine", "sim", "--host", "0.0.0.0", "--json")
    argv = json.loads(res.stdout)["argv"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    res = run_cli(tmp_path, "plan", "--engine", "vllm", "--engine-version", "0.33.0", "--model", "/m", "--json")
    argv = json.loads(res.stdout)["argv"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0", "real engines keep their documented default"


def test_sim_models_created_is_unix_time(sim_server) -> None:
    srv = sim_server()
    with urllib.request.urlopen(srv.base_url + "/v1/models", timeout=10) as resp:
        card = json.loads(resp.read())["data"][0]
    assert isinstance(card["created"], int)
    assert time.time() - 3600 < card["created"] <= time.time() + 1


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_foreground_stop_signals_exit_codes(tmp_path: Path, sig: int, code: int) -> None:
    port = free_port()
    proc = start_cli(tmp_path, "serve", "--engine", "sim", "--port", str(port), "--log", str(tmp_path / "s.log"), "-q")
    server_pid = None
    try:
        server_pid = ready_pid(proc)
        proc.send_signal(sig)
        assert wait_or_dump(proc, 30) == code
        assert not (tmp_path / "state" / f"{port}.json").exists(), "a stopped foreground server leaves no state"
    finally:
        stop_cli(proc, server_pid)


# --- make bench ENGINE=vllm without MODEL/PRESET ------------------------------------------


def fake_gpu_path(tmp_path: Path) -> str:
    """A PATH whose ``nvidia-smi`` lists one GPU, as on a GPU machine."""
    smi = tmp_path / "gpubin" / "nvidia-smi"
    smi.parent.mkdir(parents=True, exist_ok=True)
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H20 (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n")
    smi.chmod(0o755)
    return f"{smi.parent}{os.pathsep}{os.environ.get('PATH', '')}"


def test_bench_vllm_without_a_gpu_runs_the_cpu_build(tmp_path: Path) -> None:
    from launcher import vllm_cpu
    from orchestrator.bench import gpu_present

    if gpu_present():
        pytest.skip("this machine has a GPU")
    if not (vllm_cpu.default_venv() / "bin" / "vllm").is_file():
        pytest.skip("the CPU vLLM is not installed; run `make vllm-cpu`")
    res = subprocess.run([sys.executable, "-m", "orchestrator.bench", "--engine", "vllm", "--dry-run", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "no GPU" in lines[0] and "tiny-cpu" in lines[0]
    assert any(line.startswith("vllm-tiny-cpu: vllm") for line in lines)


def test_bench_vllm_on_a_gpu_machine_names_presets_and_model(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": fake_gpu_path(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "orchestrator.bench", "--engine", "vllm", "--dry-run", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env)
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert "MODEL=" in last and "PRESET=" in last and "Traceback" not in res.stderr
    for name in ("tiny-cpu", "deepseek-r1-fp8-tp8-h20"):
        assert name in last


# --- an engine's --api-key: off its command line where the release allows, masked in its log --------

# A stand-in for `python -m sglang.launch_server`: reads `--config FILE` (SGLang's YAML form) and echoes its
# arguments at start as SGLang does (`server_args=ServerArgs(..., api_key='...')`), then serves /health_generate.
FAKE_SGLANG = textwrap.dedent(
    """
    import http.server, json, os, sys, threading, time
    args = sys.argv[3:]  # after -m sglang.launch_server
    def value(flag):
        return args[args.index(flag) + 1] if flag in args else None
    key = value("--api-key")
    if value("--config"):
        for line in open(value("--config")):
            name, _, raw = line.partition(": ")
            if name == "api-key":
                key = json.loads(raw)
    port = int(value("--port"))
    open(os.environ["FAKE_PID_FILE"], "w").write(str(os.getpid()))
    """
) + HEALTH_SERVER + textwrap.dedent(
    """
    print(f"server_args=ServerArgs(model_path={value('--model-path')!r}, api_key={key!r}, port={port})", flush=True)
    sys.stderr.write("The server is fired up and ready to roll!\\n"); sys.stderr.flush()
    while True:
        time.sleep(1)
    """
)


def test_sglang_api_key_goes_by_config_file_where_the_release_reads_one(tmp_path: Path) -> None:
    from launcher.plan import build_plan

    secret = "sk-sglang-secret-0815"
    new = build_plan("sglang", version="0.5.23", model="/m", port=31000, extra_args=("--api-key", secret),
                     docker_image="img", host_facts=("", ""))
    assert secret not in " ".join(new.argv) + " ".join(new.docker_argv or [])
    (path, content), = new.secret_files.items()
    assert new.argv[-2:] == ["--config", path] and content == f'api-key: "{secret}"\n'
    assert f"{path}:{path}:ro" in new.docker_argv and secret in new.secret_values()
    assert secret not in json.dumps(new.to_dict())
    # 0.4.5 has no --config: the key stays a flag, and the plan says so.
    old = build_plan("sglang", version="0.4.5", model="/m", port=31000, extra_args=("--api-key", secret),
                     host_facts=("", ""))
    assert old.argv[-2:] == ["--api-key", secret] and not old.secret_files
    assert any("only on its command line" in w for w in old.warnings)


@pytest.mark.parametrize("version", ["0.5.23", "0.4.5"])
def test_sglang_api_key_never_lands_in_the_log_in_clear(tmp_path: Path, version: str) -> None:
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\n{FAKE_SGLANG}")
    fake.chmod(0o755)
    port = free_port()
    log = tmp_path / "sglang.log"
    pid_file = tmp_path / "engine.pid"
    secret = "sk-sglang-secret-4711"
    env = {**cli_env(tmp_path), "FAKE_PID_FILE": str(pid_file)}
    res = subprocess.run([sys.executable, "-m", "launcher.cli", "serve", "--engine", "sglang", "--engine-version", version,
                          "--python", str(fake), "--model", "/m", "--host", "127.0.0.1", "--port", str(port),
                          "--log", str(log), "--no-preflight", "--detach", "--ready-timeout", "60", "--api-key", secret],
                         capture_output=True, text=True, timeout=90, cwd=REPO_ROOT, env=env)
    state_file = tmp_path / "state" / f"{port}.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else None
    key_file = tmp_path / "secrets" / f"sglang-{port}.yaml"
    try:
        assert res.returncode == 0, res.stderr
        assert secret not in res.stdout + res.stderr
        text = log.read_text()
        assert "api_key='***'" in text and secret not in text, text  # the engine's echo, masked on its way in
        assert secret not in state_file.read_text()
        cmdline = Path(f"/proc/{pid_file.read_text()}/cmdline").read_bytes()
        if version == "0.5.23":
            assert secret.encode() not in cmdline and b"--config" in cmdline
            assert key_file.stat().st_mode & 0o777 == 0o600 and secret in key_file.read_text()
        else:
            assert secret.encode() in cmdline and not key_file.exists()  # no other way on this release
        res = run_cli(tmp_path, "stop", "--port", str(port), "--timeout", "5")
        assert res.returncode == 0, res.stderr
        assert not key_file.exists(), "the key file goes with the server"
        assert wait_gone(int(pid_file.read_text()), 20)
    finally:
        if state:
            kill_group(state["pid"])


def test_an_engine_behind_the_log_filter_still_dies_with_its_launcher(tmp_path: Path) -> None:
    """With a key the engine runs under the masking filter: SIGKILL of a foreground launcher still ends both."""
    exe = fake_vllm(tmp_path)
    port = free_port()
    proc = start_cli(tmp_path, "serve", "--engine", "vllm", "--engine-version", "0.33.0", "--engine-bin", str(exe),
                     "--model", "/m", "--host", "127.0.0.1", "--port", str(port), "--log", str(tmp_path / "vllm.log"),
                     "--no-preflight", "-q", "--api-key", "sk-foreground-2024")
    server_pid = None
    try:
        server_pid = ready_pid(proc)
        tree = process.live_tree(server_pid, server_pid)
        assert len(tree) == 2, tree  # the filter and the engine, in one session
        proc.kill()
        proc.wait(timeout=10)
        assert wait_gone(server_pid, 20), "neither the filter nor the engine outlives a SIGKILLed launcher"
        assert not process.port_in_use(port, "127.0.0.1")
    finally:
        stop_cli(proc, server_pid)


def test_what_the_launcher_reads_back_from_a_log_is_masked(tmp_path: Path) -> None:
    from launcher.diagnose import last_error_line

    log = tmp_path / "old.log"
    log.write_text("server_args=ServerArgs(api_key='sk-plain-9', tokenizer='t')\nValueError: bad --api-key sk-plain-9\n")
    line = last_error_line(log) or ""
    assert "sk-plain-9" not in line and "--api-key ***" in line
