"""Launch a server, wait until it is really ready, and stop it leaving nothing behind.

This is the in-process API behind ``loadgen-launch serve`` and ``make bench``::

    with launch("vllm", preset="tiny-cpu") as server:
        run_benchmark(server.base_url)

The order of checks is chosen so that the expensive part (loading weights, maybe
an hour) comes last: busy port, Docker daemon and checkpoint integrity are
checked before the process starts; during the wait a process exit or a fatal log
line ends it at once; on any failure the whole process tree is stopped before
:class:`LaunchError` carries the one-line diagnosis to the caller.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher import checkpoint_checks, process
from launcher.diagnose import last_error_line
from launcher.errors import LauncherError
from launcher.readiness import NotReady, Progress, ReadinessSpec, Waiter
from launcher.redact import mask_text

if TYPE_CHECKING:
    from launcher.plan import Plan


class LaunchError(LauncherError, RuntimeError):
    """The server did not come up. The message is one line: what, the usual fix, the reference."""

    def __init__(self, message: str, log_path: Path | None = None, signature: str | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path
        self.signature = signature


def local_base_url(host: str, port: int) -> str:
    """The URL a client on this machine uses; a wildcard bind is reached via the loopback."""
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def readiness_spec(plan: Any) -> ReadinessSpec:
    """The plan's readiness facts; a plan without any is probed on ``/health``."""
    spec = getattr(plan, "readiness", None)
    return spec if isinstance(spec, ReadinessSpec) else ReadinessSpec(health_path="/health")


@dataclass
class Server:
    """A running, ready server. ``stop()`` is idempotent; leaving the ``with`` block calls it."""

    base_url: str
    pid: int
    log_path: Path
    plan: Plan  # what was started: its argv and engine version are stored with every result
    engine: str = ""
    pgid: int = 0
    container: str | None = None
    progress: Progress | None = None
    log_offset: int = 0  # where this server's output begins in its log
    cleanup: list[Path] = field(default_factory=list)  # temporary folders removed by stop()
    state_path: Path | None = None  # its state file (see start_plan), removed by stop()
    _popen: subprocess.Popen | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1].split("/")[0])

    def exit_code(self) -> int | None:
        """The process's exit code, or None while it runs."""
        if self._popen is not None:
            return self._popen.poll()
        return None if process.live_tree(self.pgid or self.pid, self.pid) else 0

    def alive(self) -> bool:
        return self.exit_code() is None

    def stop(self, timeout_s: float = 15) -> None:
        """Stop the container (Docker) or the process group: SIGTERM, wait, SIGKILL.

        A second Ctrl-C while stopping is ignored: interrupting the stop is how
        orphaned workers holding GPU memory are made.
        """
        if self._stopped:
            return
        previous = None
        ok = False
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.container:
                process.docker_stop(self.container, timeout_s)
            ok = process.stop_tree(self.pgid or self.pid, self.pid, timeout_s, self._popen)
            self._stopped = True
            if ok:
                process.remove_paths(self.cleanup)
                if self.state_path is not None:
                    self.state_path.unlink(missing_ok=True)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if not ok:
            raise RuntimeError(f"processes of server pid {self.pid} survived SIGKILL; check `ps -g {self.pgid}`")

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_log_path(engine: str, port: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path.cwd() / ".loadgen" / "logs" / f"{engine}-{port}-{stamp}.log"


def _host_model_dir(model: str | None, docker_argv: list[str] | None) -> str | None:
    """The host directory behind ``model``; in Docker mode the path is the container's, so map volumes back."""
    if not model:
        return None
    if docker_argv:
        for i, arg in enumerate(docker_argv[:-1]):
            if arg in ("-v", "--volume"):
                spec = docker_argv[i + 1].split(":")
                if len(spec) >= 2 and (model == spec[1] or model.startswith(spec[1].rstrip("/") + "/")):
                    return spec[0] + model[len(spec[1]) :]
        return None
    return model


def _plan_model(plan: Any, model: str | None) -> str | None:
    if model:
        return model
    got = getattr(plan, "model", None)
    if got:
        return str(got)
    argv = list(getattr(plan, "argv", []) or [])
    for flag in ("--model", "--model-path"):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            return argv[argv.index(flag) + 1]
    if "serve" in argv and argv.index("serve") + 1 < len(argv) and not argv[argv.index("serve") + 1].startswith("-"):
        return argv[argv.index("serve") + 1]
    return None


def check_checkpoint_or_raise(model_dir: str | None) -> checkpoint_checks.CheckpointReport | None:
    """Header-level integrity check before a start; raises LaunchError naming the broken file."""
    if model_dir is None or not checkpoint_checks.looks_like_local_checkpoint(model_dir):
        return None
    report = checkpoint_checks.run_preflight(Path(model_dir).expanduser(), manifest="skip")
    if report.layout and not report.ok:
        first = report.problems[0]
        more = f" (+{len(report.problems) - 1} more; run `loadgen-launch check --model {model_dir}`)" if len(report.problems) > 1 else ""
        raise LaunchError(f"checkpoint is broken, not starting: {first}{more}", signature="checkpoint")
    return report


def check_memory_or_raise(plan: Any, model_dir: str | None) -> Any:
    """Replay the engine's KV sizing rule before the load; raise LaunchError when it predicts failure.

    Silently skipped when a figure is unknown (no nvidia-smi, unknown model): a
    prediction we cannot make must not block a start.
    """
    if getattr(plan, "engine", None) not in ("vllm", "sglang") or not getattr(plan, "options", None):
        return None
    try:
        from launcher.memory import memory_kwargs_from_plan, plan_memory

        kwargs = memory_kwargs_from_plan(plan)
        if model_dir and Path(model_dir).is_dir():
            kwargs["checkpoint_dir"] = model_dir
        mplan = plan_memory(**kwargs)
    except (ImportError, ValueError, OSError, KeyError):
        return None
    if mplan.fails:
        smallest = mplan.min_fraction_to_start
        hint = f"; the smallest {mplan.fraction_flag} that starts is {smallest:.3f}" if smallest else ""
        raise LaunchError(
            f"memory plan predicts a failed start, not starting: {mplan.reason}{hint} "
            f"(details: loadgen-launch check --engine {plan.engine}; skip with --no-preflight)",
            signature="memory_plan",
        )
    return mplan


def _uses_vllm_cpu(plan: Any) -> bool:
    from launcher import vllm_cpu

    venv = str(vllm_cpu.default_venv())
    return any(str(a).startswith(venv) for a in list(getattr(plan, "argv", []) or [])[:3])


def launch(
    engine: str,
    *,
    port: int | None = None,
    preset: Any = None,
    model: Any = None,
    version: str | None = None,
    extra_args: Any = (),
    log_path: Path | str | None = None,
    ready_timeout_s: float = 900,
    on_progress: Callable[[Progress], Any] | None = None,
    docker_image: str | None = None,
    python: str | None = None,
    engine_bin: str | None = None,
    host: str = "127.0.0.1",
    gpus: Any = None,
    served_model_name: str | None = None,
    run_preflight: bool = True,
    die_with_parent: bool = False,
) -> Server:
    """Build the plan, check, start, wait for readiness; return a ready :class:`Server`.

    ``port=None`` picks a free port. Raises :class:`LaunchError` (one line) on any
    failure, with nothing left running. ``die_with_parent``: see :func:`start_plan`.
    """
    from launcher.plan import PlanError, build_plan

    if port is None:
        port = process.free_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1")
    try:
        plan = build_plan(
            engine,
            version=version,
            preset=preset,
            model=model,
            port=port,
            host=host,
            gpus=gpus,
            docker_image=docker_image,
            python=python,
            engine_bin=engine_bin,
            extra_args=tuple(extra_args or ()),
            served_model_name=served_model_name,
        )
    except PlanError as exc:
        raise LaunchError(str(exc), signature="plan") from None
    return start_plan(
        plan,
        engine=engine,
        model=model,
        log_path=Path(log_path) if log_path else None,
        ready_timeout_s=ready_timeout_s,
        on_progress=on_progress,
        run_preflight=run_preflight,
        die_with_parent=die_with_parent,
    )


def start_plan(
    plan: Plan,
    *,
    engine: str,
    model: str | None = None,
    log_path: Path | None = None,
    ready_timeout_s: float = 900,
    on_progress: Callable[[Progress], Any] | None = None,
    run_preflight: bool = True,
    work_dir: Path | None = None,
    state_path: Path | None = None,
    die_with_parent: bool = False,
) -> Server:
    """Start an already-built plan (argv, env, docker_argv, host, port, readiness) and wait for it.

    ``state_path``: write a state file there as soon as the process exists (so
    ``loadgen-launch status``/``stop`` see it even while it loads, and even if we
    are killed); ``Server.stop`` removes it. ``die_with_parent``: the server gets
    SIGTERM when the thread calling this dies, even by SIGKILL (Linux; only for a
    server that must not outlive its caller).
    """
    port = int(plan.port)
    host = plan.host
    docker_argv = list(plan.docker_argv) if plan.docker_argv else None
    try:
        busy = process.port_in_use(port, host)
    except socket.gaierror as exc:
        raise LaunchError(f"--host {host} is not an IP address or a known host name ({exc.strerror}); use 0.0.0.0, "
                          f"127.0.0.1 or one of `hostname -I`", signature="host") from None
    except OSError:
        raise LaunchError(f"--host {host} is not an address of this machine; use 0.0.0.0, 127.0.0.1 "
                          f"or one of `hostname -I`", signature="host") from None
    if busy:
        raise LaunchError(
            f"port {port} is already in use: stop the server holding it (loadgen-launch stop --port {port}) "
            f"or pick another --port",
            signature="port_in_use",
        )
    if docker_argv:
        problem = process.docker_problem()
        if problem:
            raise LaunchError(problem, signature="docker")
    if run_preflight and engine != "sim":
        host_model = _host_model_dir(_plan_model(plan, model), docker_argv)
        check_checkpoint_or_raise(host_model)
        check_memory_or_raise(plan, host_model)

    log_path = Path(log_path) if log_path else default_log_path(engine, port)
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab"):
            pass
    except OSError as exc:
        raise LaunchError(f"cannot write the server log {log_path}: {exc.strerror or exc}; "
                          f"give --log a file in a writable folder", signature="log") from None
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in (getattr(plan, "env", None) or {}).items()})
    cleanup: list[Path] = []
    if engine == "vllm" and not docker_argv and _uses_vllm_cpu(plan) and "VLLM_CACHE_ROOT" not in env:
        from launcher.vllm_cpu import MAX_TMPDIR_LEN, serve_env

        work = Path(work_dir or log_path.parent / f"{log_path.stem}.work").absolute()
        tmp = work / "tmp"
        if len(str(tmp)) > MAX_TMPDIR_LEN:  # ipc:// socket paths must stay under 108 bytes
            tmp = Path(tempfile.mkdtemp(prefix="lgv-", dir="/tmp" if os.path.isdir("/tmp") else None))
            cleanup.append(tmp)
        env.update(serve_env(work, tmp))
    try:
        cleanup += write_secret_files(getattr(plan, "secret_files", None) or {})
    except OSError as exc:
        process.remove_paths(cleanup)
        raise LaunchError(f"cannot write the engine's key file: {exc.strerror or exc}; run from a writable folder",
                          signature="secret_file") from None
    secrets = plan.secret_values() if hasattr(plan, "secret_values") else []
    argv = docker_argv or list(plan.argv)
    # Ctrl-C or SIGTERM between the fork and the `try` below would leave a server nobody stops:
    # held until the server is in hand, then delivered where it is stopped.
    held = process.HeldSignals().hold()
    try:
        popen, log_offset = process.start_process([str(a) for a in argv], env, log_path,
                                                  die_with_parent=die_with_parent, secrets=secrets)
    except OSError as exc:
        held.release()
        process.remove_paths(cleanup)
        raise LaunchError(
            f"cannot start {argv[0]!r}: {exc.strerror}; install the engine or point --engine-bin/--python at it",
            log_path=log_path,
            signature="exec",
        ) from None
    server = Server(
        base_url=local_base_url(host, port),
        pid=popen.pid,
        log_path=log_path,
        plan=plan,
        engine=engine,
        pgid=popen.pid,
        container=(getattr(plan, "docker_name", None) or process.docker_container_name(docker_argv)) if docker_argv else None,
        log_offset=log_offset,
        cleanup=cleanup,
        _popen=popen,
    )
    spec = readiness_spec(plan)
    try:
        held.release()
        if state_path is not None:
            try:
                _write_state(server, Path(state_path), spec.health_path, detached=not die_with_parent)
            except OSError as exc:
                raise LaunchError(f"cannot write the state file {state_path}: {exc.strerror or exc}; "
                                  f"give --state a file in a writable folder", signature="state") from None
        waiter = Waiter(server.base_url, spec, log_path, popen.poll, engine=engine, on_progress=on_progress,
                        log_offset=log_offset)
        server.progress = waiter.wait(ready_timeout_s)
    except NotReady as exc:
        server.stop()
        raise LaunchError(mask_text(_failure_message(engine, exc, log_path, log_offset), secrets), log_path=log_path,
                          signature=exc.finding.signature.id if exc.finding else exc.reason) from None
    except BaseException:  # Ctrl-C or anything unexpected: never leave the server behind
        server.stop()
        raise
    return server


def write_secret_files(files: dict[str, str]) -> list[Path]:
    """Write each file readable by its owner only (created so, never widened later); their paths."""
    written = []
    for name, content in files.items():
        path = Path(name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        written.append(path)
    return written


def _write_state(server: Server, path: Path, health_path: str, detached: bool) -> None:
    """Record the server for ``loadgen-launch status``/``stop`` (the command line is stored masked)."""
    plan = server.plan
    state = process.ServerState(
        pid=server.pid, pgid=server.pgid, port=int(plan.port), host=str(getattr(plan, "host", "127.0.0.1")),
        engine=server.engine, base_url=server.base_url, log_path=str(server.log_path.absolute()),
        argv=[str(a) for a in (getattr(plan, "docker_argv", None) or plan.argv)], started_at=time.time(),
        container=server.container, health_path=health_path, cleanup=[str(p) for p in server.cleanup],
        detached=detached,
    )
    server.state_path = process.write_state(path, state)


def _failure_message(engine: str, exc: NotReady, log_path: Path, log_offset: int = 0) -> str:
    if exc.finding is not None:
        return f"{engine} failed to start: {exc.finding.describe()}; log: {log_path}"
    line = last_error_line(log_path, start=log_offset)
    last = f"; last error in the log: {line[:240]!r}" if line else ""
    return f"{engine} failed to start: {exc}{last}; log: {log_path}"
