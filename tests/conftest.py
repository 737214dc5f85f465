"""Shared fixtures: real sim servers on 127.0.0.1, started as subprocesses.

Tests talk to the sim over real sockets, exactly as the load generator talks to
vLLM or SGLang. Every server is started in its own process group and stopped
(SIGTERM, then SIGKILL: ``launcher.process.stop_tree``) at teardown, whatever the
test's outcome.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from launcher.process import stop_tree

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
START_TIMEOUT_S = 30.0


# Files started first, longest first (make test runs them in several processes, a file per process at a
# time): the ones that start real vLLM, then the others by measured duration (--durations), so that no
# long file starts last and keeps one process busy after the others are done. The rest keep their order.
FIRST = (
    "loadgen/test_vllm_real.py", "loadgen/test_workload_vllm.py", "loadgen/test_workers.py",
    "loadgen/test_sessions.py", "loadgen/test_capacity_sim.py", "orchestrator/test_bench_loop.py",
    "loadgen/test_workload_random.py", "loadgen/test_cli.py", "analysis/test_intervals.py",
    "analysis/test_compare_gate.py", "launcher/test_cluster.py", "loadgen/test_cli_validation.py",
    "loadgen/test_prefix_cache.py", "loadgen/test_traces.py", "analysis/test_report_inputs.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].removeprefix("tests/"), len(rank)))


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C is part of what the tests check: they send SIGINT to the programs they start. A suite
    started as a background job of a script (``make test &``) inherits SIGINT ignored, passes that on to
    every child, and a child that ignores Ctrl-C never stops. Each test process takes SIGINT back."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class SimServer:
    """A running sim: ``base_url`` like ``http://127.0.0.1:PORT``."""

    base_url: str
    port: int
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_tree(self.proc.pid, self.proc.pid, timeout_s=5.0, popen=self.proc)


def wait_healthy(base_url: str, proc: subprocess.Popen, timeout_s: float = START_TIMEOUT_S,
                 expect_status: int = 200) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sim exited with code {proc.returncode} before answering /health")
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=2) as resp:
                if resp.status == expect_status:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if exc.code == expect_status:
                return
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"sim did not answer /health {expect_status} within {timeout_s:.0f} s (last: {last})")


def start_sim(*extra_args: str, log_dir: Path, expect_status: int = 200) -> SimServer:
    port = free_port()
    log_path = log_dir / f"sim-{port}.log"
    cmd = [sys.executable, "-m", "launcher.sim", "--host", "127.0.0.1", "--port", str(port), "--profile", "fast",
           *extra_args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = SimServer(f"http://127.0.0.1:{port}", port, proc, log_path)
    try:
        wait_healthy(server.base_url, proc, expect_status=expect_status)
    except BaseException as exc:
        stop_tree(proc.pid, proc.pid, timeout_s=5.0, popen=proc)
        raise RuntimeError(f"{exc}\n--- sim log ---\n{server.log()}") from None
    return server


@pytest.fixture
def sim_server(tmp_path: Path) -> Iterator[Callable[..., SimServer]]:
    """Factory: ``srv = sim_server("--tokens-per-chunk", "2")`` starts a fresh sim
    (fast profile unless ``--profile`` is given again) and stops it after the test."""
    started: list[SimServer] = []

    def factory(*extra_args: str, expect_status: int = 200) -> SimServer:
        server = start_sim(*extra_args, log_dir=tmp_path, expect_status=expect_status)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point LOADGEN_CACHE_DIR into the test's own folder (the prompt cache starts empty)."""
    monkeypatch.setenv("LOADGEN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tok():
    """The bundled DeepSeek-R1 tokenizer as loadgen loads it, once per test module."""
    from loadgen.workload.tokenizer import load_tokenizer

    return load_tokenizer("deepseek-r1")


def load_hf_tokenizer(path: str):
    """transformers' own tokenizer for a folder: the independent reference the tests
    count with (transformers is a test dependency; loadgen never imports it)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def tokenizer_with_template(folder: Path, template: str) -> Path:
    """A copy of the bundled DeepSeek-R1 tokenizer in ``folder`` with another chat template."""
    import json

    from loadgen.workload.tokenizer import bundled_tokenizer_dir

    src = bundled_tokenizer_dir()
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def hf():
    """The bundled DeepSeek-R1 tokenizer loaded by transformers (the reference)."""
    from loadgen.workload.tokenizer import bundled_tokenizer_dir

    return load_hf_tokenizer(str(bundled_tokenizer_dir()))


@pytest.fixture(scope="session")
def sim_fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimServer]:
    """One default fast sim shared by the whole session."""
    server = start_sim(log_dir=tmp_path_factory.mktemp("sim-fast"))
    try:
        yield server
    finally:
        server.stop()


def stored_rows(path: Path) -> int:
    """Rows in a per-request store that is still being appended (0 while it has no header)."""
    import numpy as np

    try:
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(fh)  # the header alone: no rows read
    except (OSError, ValueError):
        return 0
    return int(shape[0])


def wait_for_rows(folder: Path, pattern: str, files: int, proc: subprocess.Popen, timeout_s: float = 90.0) -> None:
    """Return once ``files`` stores matching ``pattern`` in ``folder`` each hold a row: the run has
    measured something in every one of them. An observed fact, not a guess at the machine's speed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(stored_rows(p) > 0 for p in folder.glob(pattern)) >= files:
            return
        time.sleep(0.05)
    raise AssertionError(f"no row in {files} store(s) {folder}/{pattern} (exit {proc.poll()})")


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free ports (a multi-node sim listens on port + rank).

    Taken below the kernel's ephemeral range, from which the product's ``free_port()`` and every
    outgoing connection draw, so a port checked free here is not handed to a client a moment later;
    and above Ray's worker ports (10002-19999), which a Ray test's cluster takes for itself.
    """
    import random
    import socket

    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        first = random.randrange(20_000, max(low - count, 20_001))
        socks = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


def free_port(host: str = "127.0.0.1") -> int:
    """A free port for a test's server, below the ephemeral range (see :func:`free_port_run`)."""
    return free_port_run(1, host)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory):
    """One real vLLM (CPU build, tiny-cpu preset) for the tests that need one: a start costs a minute
    or more of Python imports on two cores. They live in one file (tests/loadgen/test_vllm_real.py), which
    ``make test`` hands to one process (``--dist loadfile``).

    Launched from a deep log folder, as a benchmark's results tree gives (vLLM's ipc:// socket paths
    under TMPDIR must still fit in 107 bytes), with VLLM_SERVER_DEV_MODE=1, which serves
    POST /reset_prefix_cache. Stopping it must leave no process and no temporary folder behind.
    """
    from launcher import process
    from launcher.lifecycle import launch

    work = tmp_path_factory.mktemp("vllm") / "results" / ("deep-folder-" * 5) / "vllm-tiny-cpu"
    before = os.environ.get("VLLM_SERVER_DEV_MODE")
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # the launched server inherits it
    try:
        srv = launch("vllm", preset="tiny-cpu", log_path=work / "server.log", ready_timeout_s=420)
    finally:
        if before is None:
            os.environ.pop("VLLM_SERVER_DEV_MODE", None)
        else:
            os.environ["VLLM_SERVER_DEV_MODE"] = before
    group = (srv.pgid, srv.pid)
    try:
        yield srv
    finally:
        srv.stop(timeout_s=20)
        assert process.live_tree(*group) == set(), "a vLLM process survived stop()"
        assert not any(p.exists() for p in srv.cleanup), "the short TMPDIR was not removed"


@pytest.fixture
def fixed_profile(tmp_path: Path) -> Path:
    """A sim profile whose every step is 100 ms (÷ time scale) with no prefill cost: a sim at half the
    time scale is exactly twice as slow."""
    path = tmp_path / "fixed.json"
    path.write_text(json.dumps({"name": "fixed", "base_ms": 100, "decode_seq_ms": 0, "prefill_token_ms": 0,
                                "max_num_seqs": 64, "natural_len_median": 0}))
    return path


@contextmanager
def serve_text(answer: Callable[[str], tuple[int, bytes]]) -> Iterator[str]:
    """A tiny text server on 127.0.0.1 (a Prometheus page, a server without an endpoint): every GET or POST
    gets ``answer(path)`` (status, body). Yields the root URL; stopped on exit."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, body = answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815 - http.server's name

        def log_message(self, *args: object) -> None:
            pass

    with serve_http(Handler) as url:
        yield url


@contextmanager
def serve_http(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on 127.0.0.1 from a thread (a connection per thread); yields the root URL,
    stopped on exit."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
