"""Start, watch and stop a server process tree; remember detached servers in a state file.

An engine is a tree of processes (vLLM: API server, engine core, workers; SGLang:
tokenizer, schedulers per rank, detokenizer). Killing only the top one leaves
workers holding GPU memory, and the next start then fails in memory profiling.
So every server runs in its own session/process group, and stopping means:
SIGTERM to the group, wait, SIGKILL whatever is left — the group *and* any
descendant that moved to another group — until nothing is alive.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from launcher import logmask
from launcher.redact import mask_argv, mask_text

STATE_DIR_ENV = "LOADGEN_STATE_DIR"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# --- ports -----------------------------------------------------------------------


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    """True when something already listens on (or holds) ``port``.

    The bind test uses SO_REUSEADDR like the servers do, so connections of a
    server stopped a moment ago (TIME_WAIT) do not count as busy, while a
    listener does; a connect to the loopback catches a server bound with
    SO_REUSEPORT (vLLM 0.8.2), which a bind test alone might miss.
    """
    bind_host = "" if host in ("0.0.0.0", "::", "") else host
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
                raise  # the host does not resolve, or is not an address of this machine: not a port question
            return True
    probe = "127.0.0.1" if family == socket.AF_INET and bind_host in ("", "127.0.0.1") else bind_host or "::1"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            return sock.connect_ex((probe, port)) == 0
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --- process tree ------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) from /proc, or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[2])


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def live_tree(pgid: int, root_pid: int | None = None) -> set[int]:
    """Non-zombie processes in group ``pgid`` plus every descendant of ``root_pid``."""
    stats = {}
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st is not None:
            stats[pid] = st
    members = {pid for pid, (state, _, pg) in stats.items() if pg == pgid and state != "Z"}
    roots = set(members)
    if root_pid is not None:
        roots.add(root_pid)
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(roots)
    seen = set(stack)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
                if stats[child][0] != "Z":
                    members.add(child)
    if root_pid is not None and root_pid in stats and stats[root_pid][0] != "Z":
        members.add(root_pid)
    return members


def _signal_all(pgid: int, pids: set[int], sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(pgid: int, root_pid: int | None = None, timeout_s: float = 15.0, popen: subprocess.Popen | None = None) -> bool:
    """SIGTERM the group, wait up to ``timeout_s``, then SIGKILL; True when nothing survives.

    ``popen`` (when we started the process) is reaped as we go, so its zombie does
    not look alive.
    """
    pids = live_tree(pgid, root_pid)
    if not pids:
        if popen is not None:
            popen.poll()
        return True
    known = set(pids)
    _signal_all(pgid, pids, signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, timeout_s)
    while time.monotonic() < deadline:
        if popen is not None:
            popen.poll()
        pids = live_tree(pgid, root_pid) | {p for p in known if _alive(p)}
        if not pids:
            return True
        known |= pids
        time.sleep(0.1)
    for _ in range(50):
        pids = live_tree(pgid, root_pid) | {p for p in known if _alive(p)}
        if not pids:
            return True
        known |= pids
        _signal_all(pgid, pids, signal.SIGKILL)
        if popen is not None:
            try:
                popen.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(0.1)
    return not (live_tree(pgid, root_pid) | {p for p in known if _alive(p)})


def _alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] != "Z"


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (this machine)."""
    return _alive(pid)


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when the thread that started it dies.

    Linux's PR_SET_PDEATHSIG: a launcher killed with SIGKILL cannot stop its
    server, so the kernel does it. SIGTERM rather than SIGKILL lets the engine
    stop its own workers. None where prctl is unavailable (not Linux). The libc
    function is looked up here, before the fork, so the child only calls it.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


class HeldSignals:
    """SIGINT and SIGTERM held over a short window (a server forked but not yet in our hands) and
    delivered on :meth:`release`, where the caller can stop what it started. Main thread only
    (elsewhere Python delivers no signal anyway)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.previous: dict[int, Any] | None = None

    def hold(self) -> HeldSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
            for sig in self.SIGNALS:
                signal.signal(sig, lambda signum, _frame: self.pending.append(signum))
        return self

    def release(self) -> None:
        """Restore the handlers and deliver what arrived meanwhile (idempotent)."""
        if self.previous is None:
            return
        previous, self.previous = self.previous, None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        pending, self.pending = self.pending, []
        for sig in pending:
            os.kill(os.getpid(), sig)


def start_process(argv: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None,
                  die_with_parent: bool = False, secrets: Sequence[str] = ()) -> tuple[subprocess.Popen, int]:
    """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``.

    A new session makes the server its own process-group leader, so a Ctrl-C at
    the terminal reaches only us and we stop the server deliberately. Returns the
    process and the log offset where its output begins (a log may hold earlier
    runs: a resumed benchmark appends to the same file). The log's header line
    shows the command with secrets masked. ``die_with_parent``: see
    :func:`die_with_parent_hook` (not for a detached server, which must outlive us).
    ``secrets``: values the engine may echo; its output then goes to the log
    through :mod:`launcher.logmask`, which replaces them by ``***`` (the returned
    process is that filter, the engine's parent, in the same session).
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run = list(argv)
    if secrets:
        if shutil.which(argv[0], path=env.get("PATH")) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
        run = [sys.executable, "-s", str(Path(logmask.__file__)), "--", *argv]
        env = {**env, logmask.SECRETS_ENV: json.dumps(list(secrets))}
    with open(log_path, "ab", buffering=0) as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        # a node's command is one shell script argument: its values are masked by value, not by flag
        log.write(f"=== loadgen-launch {stamp}: {mask_text(' '.join(mask_argv(argv)), secrets)}\n".encode())
        offset = log.tell()
        return subprocess.Popen(
            run,
            env=env,
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=die_with_parent_hook() if die_with_parent else None,
        ), offset


# --- docker ------------------------------------------------------------------------


def docker_problem() -> str | None:
    """None when a Docker daemon answers, else a one-line reason and fix."""
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=15
        )
    except FileNotFoundError:
        return "the docker client is not installed; install Docker or run natively (drop --docker)"
    except subprocess.TimeoutExpired:
        return "the Docker daemon does not answer (docker info timed out); start it or run natively (drop --docker)"
    if proc.returncode != 0:
        first = (proc.stderr or proc.stdout).strip().splitlines()
        why = first[-1] if first else f"exit {proc.returncode}"
        return f"no Docker daemon is reachable ({why}); start it (systemctl start docker) or run natively (drop --docker)"
    return None


def docker_stop(name: str, timeout_s: float = 15.0) -> bool:
    try:
        proc = subprocess.run(
            ["docker", "stop", "-t", str(int(timeout_s)), name], capture_output=True, text=True, timeout=timeout_s + 30
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def docker_container_name(docker_argv: list[str] | None) -> str | None:
    if not docker_argv:
        return None
    for i, arg in enumerate(docker_argv):
        if arg == "--name" and i + 1 < len(docker_argv):
            return docker_argv[i + 1]
        if arg.startswith("--name="):
            return arg.split("=", 1)[1]
    return None


# --- state files ---------------------------------------------------------------------


@dataclass
class ServerState:
    """What ``serve --detach`` leaves behind so that ``stop`` and ``status`` find the server."""

    pid: int
    pgid: int
    port: int
    host: str
    engine: str
    base_url: str
    log_path: str
    argv: list[str]
    started_at: float
    container: str | None = None
    health_path: str = "/health"
    cleanup: list[str] = field(default_factory=list)  # temporary folders to remove once stopped
    detached: bool = True  # False: a foreground `serve` owns it and removes this file when it stops

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def remove_paths(paths: list[Path]) -> None:
    """Remove temporary folders and files (a folder tree or a single file each)."""
    for path in paths:
        if Path(path).is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path.cwd() / ".loadgen" / "servers")


def default_state_path(port: int) -> Path:
    return state_dir() / f"{port}.json"


def write_state(path: Path, state: ServerState) -> Path:
    """Write atomically (temp file + rename): a reader never sees half a file. ``argv`` is stored masked."""
    state = replace(state, argv=mask_argv(state.argv))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(state.to_json(), encoding="utf-8")
    tmp.replace(path)
    return path


def read_state(path: Path) -> ServerState:
    """Raise ValueError with a one-line reason when the file is missing or damaged."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ServerState(**raw)
    except FileNotFoundError:
        raise ValueError(f"no state file {path}: was the server started with `serve --detach`?") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"state file {path} is damaged ({exc}); stop the server by its pid and delete the file") from None


def list_states() -> list[Path]:
    root = state_dir()
    return sorted(root.glob("*.json")) if root.is_dir() else []


def state_alive(state: ServerState) -> bool:
    return bool(live_tree(state.pgid, state.pid)) or state.container is not None and _container_running(state.container)


def _container_running(name: str) -> bool:
    try:
        proc = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True, timeout=10
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "true"
