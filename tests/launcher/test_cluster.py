"""Starting and stopping a multi-node plan: ssh argv construction, and real runs of two sim "nodes" locally.

There is no sshd here, so the ssh transport is checked as the argv it builds;
the local transport runs the very same node scripts with ``sh -c``. Every test
stops what it starts and checks that no process of any node is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import process
from launcher.cluster import ClusterError, start_cluster
from launcher.diagnose import diagnose_text
from launcher.multinode import build_multinode_plan
from launcher.plan import project_root
from launcher.readiness import http_status
from launcher.transport import LocalTransport, SshTransport, parse_pgid, start_script, stop_script
from tests.conftest import free_port, free_port_run


def test_ssh_argv_uses_the_system_ssh_with_batch_mode_and_one_script_argument():
    plan = build_multinode_plan("sglang", preset="deepseek-r1-fp8-2node-h20", node_addrs="ops@10.0.0.1,ops@10.0.0.2")
    worker = plan.commands[1]
    script = start_script(worker.argv, {"NCCL_SOCKET_IFNAME": "ens 5"})
    argv = SshTransport().argv(worker.node.target, script)
    assert argv[0] == "ssh" and "BatchMode=yes" in argv and argv[-2] == "ops@10.0.0.2" and argv[-1] == script
    assert worker.node.address == "10.0.0.2"  # the engines get the address, ssh the target
    assert "-i" not in argv and "-F" not in argv  # the user's keys and ~/.ssh/config apply unchanged
    assert script.startswith("exec setsid -w sh -c ")
    assert "--dist-init-addr 10.0.0.1:5000" in script and "'NCCL_SOCKET_IFNAME=ens 5'" in script
    stop = stop_script(4242, 2.0, [["docker", "stop", "sglang-deepseek-r1-node1"]])
    assert "kill -TERM -4242" in stop and "kill -KILL -4242" in stop and "docker stop sglang-deepseek-r1-node1" in stop


def test_node_script_runs_in_its_own_session_with_its_env_and_prints_the_group():
    script = start_script([sys.executable, "-c", "import os; print(os.getpgid(0), os.environ['LG_NODE'])"], {"LG_NODE": "a b"})
    done = subprocess.run(LocalTransport().argv("127.0.0.1", script), capture_output=True, text=True, timeout=30)
    first, second = done.stdout.splitlines()
    pgid = parse_pgid(first)
    assert pgid is not None and second == f"{pgid} a b"


def test_stop_and_alive_scripts_work_under_the_system_sh():
    """/bin/sh may be dash, whose kill takes no "--": the scripts must still find and stop a group."""
    from launcher.transport import alive_script

    script = start_script(["sleep", "60"], {})
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pgid = parse_pgid(proc.stdout.readline())
        assert pgid is not None
        assert subprocess.run(["sh", "-c", alive_script(pgid)], timeout=10).returncode == 0
        done = subprocess.run(["sh", "-c", stop_script(pgid, 5.0)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        proc.wait(10)
        assert not process.live_tree(pgid)
        assert subprocess.run(["sh", "-c", alive_script(pgid)], timeout=10).returncode != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def sim_plan(port: int, extra=("--profile", "fast")):
    return build_multinode_plan("sim", nodes=2, node_addrs="127.0.0.1,127.0.0.1", port=port, extra_args=list(extra))


def assert_nothing_left(cluster, ports):
    for rc in cluster.running:
        assert rc.pgid is not None
        assert not process.live_tree(rc.pgid), f"{rc.label}: group {rc.pgid} still has processes"
        assert not process.live_tree(rc.popen.pid, rc.popen.pid)
        assert not cluster.remote_alive(rc)
    for port in ports:
        assert not process.port_in_use(port, "127.0.0.1"), f"port {port} still held"


def test_two_sim_nodes_start_in_order_stream_logs_and_stop_leaving_nothing(tmp_path):
    port = free_port_run(2)
    lines: list[tuple[str, str]] = []
    cluster = start_cluster(sim_plan(port), log_dir=tmp_path, ready_timeout_s=120,
                            on_line=lambda label, line: lines.append((label, line)))
    try:
        events = [(label, what) for _, label, what in cluster.events]
        assert events == [("node0:server", "started"), ("node0:server", "wait line"), ("node1:sim", "started"),
                          ("node1:sim", "wait line"), ("node0:server", "ready")]
        times = [t for t, _, _ in cluster.events]
        assert times == sorted(times)
        assert http_status(f"http://127.0.0.1:{port}/health") == 200
        assert http_status(f"http://127.0.0.1:{port + 1}/health") == 200
        # Both nodes' output reached us, labelled, and each node wrote its own log file.
        assert any(lbl == "node0:server" and f":{port}" in ln for lbl, ln in lines)
        assert any(lbl == "node1:sim" and f":{port + 1}" in ln for lbl, ln in lines)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["node0-server.log", "node1-sim.log"]
        assert all(rc.pgid != rc.popen.pid for rc in cluster.running)  # setsid: a session of its own
    finally:
        problems = cluster.stop(timeout_s=10)
    assert problems == []
    assert [what for _, _, what in cluster.events[-2:]] == ["stopped", "stopped"]
    assert [label for _, label, what in cluster.events if what == "stopped"] == ["node1:sim", "node0:server"]
    assert_nothing_left(cluster, [port, port + 1])


def test_a_node_given_a_secret_never_writes_it_to_its_log(tmp_path):
    """A node's command is one script argument: the key in it, and the node echoing it, are masked in the log."""
    import dataclasses

    port = free_port_run(2)
    secret = "hf-node-secret-5150"
    plan = sim_plan(port)
    echo = ["sh", "-c", 'echo "hf token $HF_TOKEN"; exec "$@"', "sh"]  # an engine that prints its token at start
    plan.commands = [dataclasses.replace(c, argv=[*echo, *c.argv], env={**c.env, "HF_TOKEN": secret})
                     for c in plan.commands]
    cluster = start_cluster(plan, log_dir=tmp_path, ready_timeout_s=120)
    try:
        logs = [p.read_text() for p in sorted(tmp_path.glob("node*.log"))]
        assert len(logs) == 2 and all("hf token ***" in text for text in logs), logs
        assert not any(secret in text for text in logs)
    finally:
        assert cluster.stop(timeout_s=10) == []
    assert_nothing_left(cluster, [port, port + 1])


def test_address_in_use_on_a_worker_fails_the_start_naming_the_worker(tmp_path):
    import socket

    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):  # a free port whose neighbour (node 1's port) we can take
            port = free_port()
            try:
                blocker.bind(("127.0.0.1", port + 1))
                break
            except OSError:
                continue
        blocker.listen(1)
        started = time.monotonic()
        with pytest.raises(ClusterError) as err:
            start_cluster(sim_plan(port), log_dir=tmp_path, ready_timeout_s=60)
        assert time.monotonic() - started < 50  # failed fast, not at the timeout
    assert err.value.label == "node1:sim"
    assert "node1:sim (127.0.0.1)" in str(err.value) and "node1-sim.log" in str(err.value)
    assert "\n" not in str(err.value)
    # The head that had started is gone too.
    assert not process.port_in_use(port, "127.0.0.1")


def _serve_two_sims(tmp_path: Path, port: int) -> subprocess.Popen:
    """A foreground ``loadgen-launch serve --nodes 2`` of two local sims (node logs in tmp_path/logs)."""
    env = {**os.environ, "PYTHONPATH": str(project_root()), "LOADGEN_STATE_DIR": str(tmp_path / "servers")}
    return subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "serve", "--engine", "sim", "--nodes", "2", "--node-addr",
         "127.0.0.1,127.0.0.1", "--port", str(port), "--log", str(tmp_path / "logs"), "--", "--profile", "fast"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )


def _await_ready(proc: subprocess.Popen, port: int) -> None:
    ready = proc.stdout.readline()
    assert ready.startswith(f"ready: http://127.0.0.1:{port}"), ready + proc.stderr.read()


def _launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project_root()), "LOADGEN_STATE_DIR": str(tmp_path / "servers")}
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_a_foreground_multinode_serve_is_listed_by_status_and_stopped_by_stop(tmp_path):
    port = free_port_run(2)
    proc = _serve_two_sims(tmp_path, port)
    try:
        _await_ready(proc, port)
        listed = _launch(tmp_path, "status", "--json")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        st = json.loads(listed.stdout.splitlines()[0])
        assert st["kind"] == "cluster" and not st["detached"] and st["launcher_alive"] and st["health"] == 200
        assert len(st["nodes"]) == 2 and all(n["alive"] and n["pgid"] for n in st["nodes"])
        groups = [n["pgid"] for n in st["nodes"]]
        stopped = _launch(tmp_path, "stop", "--port", str(port))
        assert stopped.returncode == 0 and "stopped sim on 1 node(s)" in stopped.stdout, stopped.stderr
        assert proc.wait(60) == 0
        assert "stopped by loadgen-launch stop" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert not any(process.live_tree(g) for g in groups)
    assert not process.port_in_use(port, "127.0.0.1") and not process.port_in_use(port + 1, "127.0.0.1")


def test_cli_serve_nodes_runs_locally_until_ctrl_c_and_stops_every_node(tmp_path):
    port = free_port_run(2)
    proc = _serve_two_sims(tmp_path, port)
    try:
        _await_ready(proc, port)
        assert http_status(f"http://127.0.0.1:{port + 1}/health") == 200
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 130, err
    assert "[node1:sim] sim: serving model" in err and "stopped" in err
    assert not process.port_in_use(port, "127.0.0.1") and not process.port_in_use(port + 1, "127.0.0.1")
    assert not process.live_tree(proc.pid)


def test_cli_serve_nodes_detach_then_stop(tmp_path):
    port = free_port_run(2)
    env = {**os.environ, "PYTHONPATH": str(project_root()), "LOADGEN_STATE_DIR": str(tmp_path / "servers")}
    base = [sys.executable, "-m", "launcher.cli"]
    done = subprocess.run(base + ["serve", "--engine", "sim", "--nodes", "2", "--node-addr", "127.0.0.1,127.0.0.1",
                                  "--port", str(port), "--log", str(tmp_path / "logs"), "--detach", "-q", "--",
                                  "--profile", "fast"], capture_output=True, text=True, timeout=120, env=env)
    try:
        assert done.returncode == 0, done.stderr
        state = Path(tmp_path / "clusters" / f"{port}.json")
        assert state.is_file() and http_status(f"http://127.0.0.1:{port + 1}/health") == 200
    finally:
        stopped = subprocess.run(base + ["stop", "--port", str(port)], capture_output=True, text=True, timeout=120, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped sim on 1 node(s)" in stopped.stdout and not state.exists()
    assert not process.port_in_use(port, "127.0.0.1") and not process.port_in_use(port + 1, "127.0.0.1")


def test_serve_refuses_remote_nodes_without_ssh():
    env = {**os.environ, "PYTHONPATH": str(project_root())}
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "serve", "--engine", "sglang", "--model", "/m", "--nodes", "2",
                           "--node-addr", "10.0.0.1,10.0.0.2"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "pass --ssh" in done.stderr and done.stderr.count("\n") == 1


# ------------------------------------------------------------------ multi-node failure signatures


@pytest.mark.parametrize(
    ("log", "engine", "expected"),
    [
        ("INFO 04-01 10:00:00 ray_utils.py:212] Waiting for creating a placement group of specs for 10 seconds. "
         "specs=[{'GPU': 1.0, 'node:10.0.0.1': 0.001}]. Check `ray status` to see if you have enough resources.\n"
         "ValueError: Cannot provide a placement group of placement_group_specs=[{'GPU': 1.0}] within 1800 seconds. "
         "See `ray status` to make sure the cluster has enough resources.\n", "vllm", "ray_worker_never_joined"),
        ("[2025-04-01 10:00:05] ConnectionError: Failed to connect to GCS at address 10.0.0.1:6379 within 60 seconds.\n",
         "vllm", "ray_head_unreachable"),
        ("[2025-04-01 10:10:00 TP0] Init torch distributed begin.\n"
         "torch.distributed.DistStoreError: Timed out after 601 seconds waiting for clients. 8/16 clients joined.\n",
         "sglang", "dist_init_clients_missing"),
        ("[rank9]:[E401 10:20:00.1 ProcessGroupNCCL.cpp:629] [Rank 9] Watchdog caught collective operation timeout: "
         "WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600012 milliseconds "
         "before timing out.\n", "sglang", "nccl_timeout"),
        ("[W401 10:00:01 socket.cpp:752] [c10d] The server socket has failed to bind to 10.0.0.1:5000 "
         "(errno: 99 - Cannot assign requested address).\n", "sglang", "dist_rank_mismatch"),
        ("RuntimeError: The server socket has failed to listen on any local network address. port: 5000, useIpv6: 0, "
         "code: -98, name: EADDRINUSE, message: address already in use\n", "sglang", "dist_port_in_use"),
    ],
)
def test_multinode_failures_are_named(log, engine, expected):
    diag = diagnose_text(log, engine)
    assert diag.root_cause is not None and diag.root_cause.signature.id == expected
    assert diag.root_cause.signature.fix


def test_placement_wait_alone_is_a_warning_and_a_worker_log_names_the_node(tmp_path):
    diag = diagnose_text("INFO ray_utils.py:212] Waiting for creating a placement group of specs for 10 seconds. specs=[]\n", "vllm")
    assert not diag.failed and diag.notes[0].signature.id == "ray_placement_waiting"
    # The HTTP port of the head stays the generic port_in_use; a rendezvous port is the specific one.
    assert diagnose_text("OSError: [Errno 98] Address already in use\n", "vllm").root_cause.signature.id == "port_in_use"


def test_sigkill_of_a_foreground_multinode_serve_leaves_no_node_running(tmp_path):
    """The launcher cannot clean up after SIGKILL: every node's tree must end by itself."""
    port = free_port_run(2)
    proc = _serve_two_sims(tmp_path, port)
    groups: list[int] = []
    try:
        _await_ready(proc, port)
        for log in sorted((tmp_path / "logs").glob("node*.log")):
            groups += [g for g in map(parse_pgid, log.read_text().splitlines()) if g is not None]
        assert len(groups) == 2 and all(process.live_tree(g) for g in groups)
        proc.kill()
        proc.wait(10)
        # What is left to see and stop (over ssh the nodes' tie to a killed launcher is not guaranteed):
        listed = _launch(tmp_path, "status", "--json")
        st = json.loads(listed.stdout.splitlines()[0])
        assert st["kind"] == "cluster" and st["port"] == port and not st["detached"] and not st["launcher_alive"]
        assert sorted(n["pgid"] for n in st["nodes"]) == sorted(groups)
        stopped = _launch(tmp_path, "stop", "--port", str(port))
        assert stopped.returncode == 0, stopped.stderr
        assert not (tmp_path / "clusters" / f"{port}.json").exists()
        deadline = time.monotonic() + 60  # the watchers look twice a second; the sims stop on SIGTERM
        while time.monotonic() < deadline and (any(process.live_tree(g) for g in groups)
                                               or process.port_in_use(port, "127.0.0.1")
                                               or process.port_in_use(port + 1, "127.0.0.1")):
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        leftover = [g for g in groups if process.live_tree(g)]
        for g in leftover:
            process.stop_tree(g, timeout_s=5.0)
    assert not leftover, f"node groups {leftover} outlived the launcher"
    assert not process.port_in_use(port, "127.0.0.1") and not process.port_in_use(port + 1, "127.0.0.1")
