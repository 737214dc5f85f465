"""Start a multi-node plan through a transport, watch every node, stop every node.

The order is the plan's: each command starts once the previous one's
``wait_log`` line appeared (the Ray head before its workers, the workers before
the server), then the head is probed with the release's readiness signal. All
the while every node's log is read: lines go to ``on_line`` (so the user sees
the workers too), and a fatal signature or an exit on *any* node ends the start
at once, naming the node — a worker's NCCL timeout is otherwise only visible as
the head waiting forever. Stopping goes in reverse start order and leaves
nothing on any node: each command's process group is killed on its node, then
its cleanup (``ray stop``, ``docker stop``) runs there.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher import process
from launcher.diagnose import Finding, LogScanner
from launcher.errors import LauncherError
from launcher.multinode import MultiNodePlan, NodeCommand
from launcher.readiness import LogTail, Waiter
from launcher.redact import secret_values
from launcher.transport import LocalTransport, alive_script, parse_pgid, start_script, stop_script

LineSink = Callable[[str, str], Any]  # (label, line)


class ClusterError(LauncherError, RuntimeError):
    """A multi-node start failed; the message names the node, what happened and the fix. Nothing is left running."""

    def __init__(self, message: str, label: str | None = None, signature: str | None = None) -> None:
        super().__init__(message)
        self.label = label
        self.signature = signature


@dataclass
class RunningCommand:
    """One node command as started here: the local transport process, its log, and the remote group id."""

    cmd: NodeCommand
    popen: subprocess.Popen
    log_path: Path
    log_offset: int
    started_at: float
    pgid: int | None = None  # the command's session on its node (from the script's first line)
    wait_seen: bool = False
    tail: LogTail | None = None
    scanner: LogScanner | None = None
    finding: Finding | None = None
    lines: int = 0

    @property
    def label(self) -> str:
        return self.cmd.label


@dataclass
class Cluster:
    """A started multi-node server. ``stop()`` is idempotent and stops every node."""

    plan: MultiNodePlan
    transport: Any
    log_dir: Path
    docker: bool = False
    on_line: LineSink | None = None
    running: list[RunningCommand] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic time, label, event)
    stopped: bool = False
    tied: bool = False  # every node's process tree ends with this process (a foreground serve)

    @property
    def base_url(self) -> str:
        return self.plan.base_url

    def _event(self, label: str, what: str) -> None:
        self.events.append((time.monotonic(), label, what))

    def start_command(self, cmd: NodeCommand) -> RunningCommand:
        argv = cmd.docker_argv if self.docker and cmd.docker_argv else cmd.argv
        env = {} if self.docker and cmd.docker_argv else cmd.env
        script = start_script(argv, env, tied=self.tied)
        log_path = self.log_dir / f"node{cmd.rank}-{cmd.role}.log"
        try:
            popen, offset = process.start_process(self.transport.argv(cmd.node.target, script), _local_env(), log_path,
                                                  die_with_parent=self.tied, secrets=secret_values(argv, env))
        except OSError as exc:
            raise ClusterError(f"cannot start the {self.transport.name} transport for {cmd.label}: {exc.strerror or exc}",
                               cmd.label, "exec") from None
        rc = RunningCommand(cmd, popen, log_path, offset, time.monotonic())
        rc.tail = LogTail(log_path, offset)
        rc.scanner = LogScanner(self.plan.engine if self.plan.engine != "sim" else None)
        self.running.append(rc)
        self._event(cmd.label, "started")
        return rc

    def pump(self) -> None:
        """Read every node's new log lines: record the group id, feed the scanners, stream the lines."""
        for rc in self.running:
            assert rc.tail is not None and rc.scanner is not None
            for line in rc.tail.read_new():
                if not line.strip():
                    continue
                if rc.pgid is None and (pgid := parse_pgid(line)) is not None:
                    rc.pgid = pgid
                    continue
                rc.lines += 1
                if self.on_line:
                    self.on_line(rc.label, line)
                found = rc.scanner.feed(line)
                if found is not None and found.signature.kind == "fatal" and rc.finding is None:
                    rc.finding = found
                if not rc.wait_seen and rc.cmd.wait_log and re.search(rc.cmd.wait_log, line):
                    rc.wait_seen = True
                    self._event(rc.label, "wait line")

    def failure(self) -> str | None:
        """One line for the first node that failed (fatal log line or exit), else None."""
        for rc in self.running:
            if rc.finding is not None:
                return f"{rc.label} ({rc.cmd.node.target}): {rc.finding.describe()}; log: {rc.log_path}"
        for rc in self.running:
            code = rc.popen.poll()
            if code is not None:
                self.pump()
                root = rc.scanner.diagnosis.root_cause if rc.scanner else None
                why = root.describe() if root else _last_error(rc)
                return f"{rc.label} ({rc.cmd.node.target}) exited with code {code}: {why}; log: {rc.log_path}"
        return None

    def _check(self, what: str) -> None:
        self.pump()
        problem = self.failure()
        if problem:
            rc_label = problem.split(" ", 1)[0]
            sig = next((rc.finding.signature.id for rc in self.running if rc.finding and rc.label == rc_label), None)
            raise ClusterError(f"multi-node start failed while {what}: {problem}", rc_label, sig)

    def wait_for_log(self, rc: RunningCommand, deadline: float, interval_s: float = 0.2) -> None:
        while not rc.wait_seen:
            self._check(f"waiting for {rc.label}")
            if rc.wait_seen:
                break
            if time.monotonic() >= deadline:
                raise ClusterError(f"{rc.label} ({rc.cmd.node.target}) did not print /{rc.cmd.wait_log}/ in time; "
                                   f"read its log {rc.log_path}", rc.label, "timeout")
            time.sleep(interval_s)

    def wait_ready(self, deadline: float, interval_s: float = 0.25) -> None:
        head = next(rc for rc in self.running if rc.cmd.serves_http)
        spec = self.plan.readiness
        waiter = Waiter(self.base_url, spec, head.log_path, head.popen.poll, engine=self.plan.engine)
        ready_res = [re.compile(rx) for rx in spec.ready_log]
        seen = self.on_line

        def watch(label: str, line: str) -> None:
            if label == head.label and any(rx.search(line) for rx in ready_res):
                waiter.ready_line_seen = True
            if seen:
                seen(label, line)

        self.on_line = watch
        try:
            while True:
                self._check("waiting for the head's readiness")
                if waiter.is_ready_now():
                    self._event(head.label, "ready")
                    return
                if time.monotonic() >= deadline:
                    raise ClusterError(f"the head {head.label} was not ready at {self.base_url}{spec.health_path} in time; "
                                       f"raise --ready-timeout or read the logs in {self.log_dir}", head.label, "timeout")
                time.sleep(interval_s)
        finally:
            self.on_line = seen

    def exited(self) -> RunningCommand | None:
        """The first command whose process ended (while serving, any exit is a failure)."""
        return next((rc for rc in self.running if rc.popen.poll() is not None), None)

    def stop(self, timeout_s: float = 15.0) -> list[str]:
        """Stop every command, last started first; return the problems (empty when nothing is left anywhere)."""
        if self.stopped:
            return []
        self.stopped = True
        self.pump()
        problems = []
        for rc in reversed(self.running):
            wait_until = time.monotonic() + 3
            while rc.pgid is None and rc.popen.poll() is None and time.monotonic() < wait_until:
                time.sleep(0.05)  # the group id is the script's first line; it may not be out yet
                self.pump()
            cleanup = [c for c in ((rc.cmd.docker_cleanup_argv if self.docker else None), rc.cmd.cleanup_argv) if c]
            if rc.pgid is not None:
                script = stop_script(rc.pgid, timeout_s, cleanup)
                done = _run(self.transport.argv(rc.cmd.node.target, script), timeout_s + 30)
                if done is None or done.returncode != 0:
                    out = (done.stdout.strip() if done else "") or "no answer"
                    problems.append(f"{rc.label} ({rc.cmd.node.target}): stopping group {rc.pgid} failed: {out}")
            if not process.stop_tree(rc.popen.pid, rc.popen.pid, timeout_s, rc.popen):
                problems.append(f"{rc.label}: the local {self.transport.name} process {rc.popen.pid} survived SIGKILL")
            self._event(rc.label, "stopped")
        self.pump()
        return problems

    def remote_alive(self, rc: RunningCommand) -> bool:
        if rc.pgid is None:
            return False
        done = _run(self.transport.argv(rc.cmd.node.target, alive_script(rc.pgid)), 30)
        return done is not None and done.returncode == 0


def _local_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _run(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _last_error(rc: RunningCommand) -> str:
    from launcher.diagnose import last_error_line

    line = last_error_line(rc.log_path, start=rc.log_offset)
    return f"last error in its log: {line[:240]!r}" if line else "no output"


def start_cluster(
    plan: MultiNodePlan,
    *,
    transport: Any = None,
    log_dir: Path | str,
    ready_timeout_s: float = 900,
    step_timeout_s: float = 300,
    docker: bool = False,
    on_line: LineSink | None = None,
    tied: bool = False,
) -> Cluster:
    """Start every node's commands in order, wait for the head; on any failure stop everything and raise.

    ``tied``: every node's process tree ends when this process does, however it ends
    (a foreground serve); a detached cluster is not tied, it outlives its launcher."""
    transport = transport or LocalTransport()
    cluster = Cluster(plan, transport, Path(log_dir), docker=docker, on_line=on_line, tied=tied)
    cluster.log_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + ready_timeout_s
    try:
        for cmd in plan.commands:
            rc = cluster.start_command(cmd)
            if cmd.wait_log:
                cluster.wait_for_log(rc, min(deadline, time.monotonic() + step_timeout_s))
        cluster.wait_ready(deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# ------------------------------------------------------------------ detached clusters


def clusters_dir() -> Path:
    """Beside the single-server state files, in their own folder (their format differs)."""
    return process.state_dir().parent / "clusters"


def write_cluster_state(cluster: Cluster, path: Path | str | None = None, detached: bool = True) -> Path:
    """What ``status``/``stop`` need to see and stop every node: transport, node, group id, cleanup.

    Written for a foreground serve too (``detached`` False, with the launcher's pid):
    a launcher killed with SIGKILL cannot stop remote nodes itself, and a node whose
    tie to it did not hold (an ssh session that stayed up) must still be findable."""
    import json
    import os

    t = cluster.transport
    state = {
        "kind": "loadgen-cluster", "engine": cluster.plan.engine, "port": cluster.plan.port, "base_url": cluster.base_url,
        "log_dir": str(cluster.log_dir.absolute()), "started_at": time.time(), "detached": detached,
        "launcher_pid": os.getpid(),
        "transport": {"name": t.name, "ssh": getattr(t, "ssh", None), "options": list(getattr(t, "options", ()))},
        "commands": [
            {"label": rc.label, "target": rc.cmd.node.target, "pgid": rc.pgid, "pid": rc.popen.pid,
             "cleanup": [c for c in ((rc.cmd.docker_cleanup_argv if cluster.docker else None), rc.cmd.cleanup_argv) if c]}
            for rc in cluster.running
        ],
    }
    path = Path(path) if path else clusters_dir() / f"{cluster.plan.port}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def is_cluster_state(path: Path) -> bool:
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("kind") == "loadgen-cluster"
    except (OSError, ValueError, AttributeError):
        return False


def cluster_state_paths(port: int | None, all_: bool) -> list[Path]:
    root = clusters_dir()
    if port is not None:
        path = root / f"{port}.json"
        return [path] if path.is_file() else []
    return sorted(root.glob("*.json")) if all_ and root.is_dir() else []


def _read_cluster_state(path: Path) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
    """(the state, its transport, its commands); ValueError (one line) when the file is unreadable."""
    import json

    from launcher.transport import SshTransport

    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        t = state["transport"]
        transport = SshTransport(t["ssh"] or "ssh", tuple(t["options"])) if t["name"] == "ssh" else LocalTransport()
        return state, transport, list(state["commands"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cluster state file {path} is unreadable ({exc}); stop the nodes by hand") from None


def stop_cluster_state(path: Path, timeout_s: float = 15.0) -> tuple[list[str], str]:
    """Stop every command recorded in a cluster state file, last started first; remove the file when clean."""
    import json

    state, transport, commands = _read_cluster_state(path)
    Path(path).unlink(missing_ok=True)  # first: a foreground serve owning it then knows the stop was asked for
    problems = []
    for c in reversed(commands):
        if c.get("pgid") is not None:
            done = _run(transport.argv(c["target"], stop_script(int(c["pgid"]), timeout_s, c.get("cleanup", []))), timeout_s + 30)
            if done is None or done.returncode != 0:
                out = (done.stdout.strip() if done else "") or "no answer"
                problems.append(f"{c['label']} ({c['target']}): stopping group {c['pgid']} failed: {out}")
        pid = int(c["pid"])
        if not process.stop_tree(pid, pid, timeout_s):
            problems.append(f"{c['label']}: the local {transport.name} process {pid} survived SIGKILL")
    if problems:  # kept for another try
        Path(path).write_text(json.dumps(state, indent=1), encoding="utf-8")
    return problems, f"{state.get('engine')} on {len({c['target'] for c in commands})} node(s), port {state.get('port')}"


def cluster_status(path: Path) -> dict[str, Any]:
    """A recorded cluster as ``status`` shows it: each node's process group alive or not, the head's health."""
    from launcher.readiness import http_status

    state, transport, commands = _read_cluster_state(path)
    nodes = []
    for c in commands:
        if c.get("pgid") is not None:
            done = _run(transport.argv(c["target"], alive_script(int(c["pgid"]))), 30)
            alive = done is not None and done.returncode == 0
        else:
            alive = bool(process.live_tree(int(c["pid"]), int(c["pid"])))
        nodes.append({"label": c["label"], "target": c["target"], "pgid": c.get("pgid"), "alive": alive})
    launcher = int(state["launcher_pid"]) if state.get("launcher_pid") else None
    alive = all(n["alive"] for n in nodes)
    return {
        "state": str(path), "kind": "cluster", "engine": state.get("engine"), "port": state.get("port"),
        "base_url": state.get("base_url"), "detached": state.get("detached", True), "launcher_pid": launcher,
        "launcher_alive": launcher is not None and process.pid_alive(launcher), "alive": alive, "nodes": nodes,
        "health": http_status(f"{state.get('base_url')}/health", timeout_s=3) if any(n["alive"] for n in nodes) else None,
        "log_dir": state.get("log_dir"), "uptime_s": round(time.time() - float(state.get("started_at", time.time())), 1),
    }
