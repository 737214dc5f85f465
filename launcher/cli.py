"""The ``loadgen-launch`` command: serve, stop, status, plan, check, diagnose.

Thin glue over :mod:`launcher.lifecycle`, :mod:`launcher.checkpoint_checks`,
:mod:`launcher.diagnose` and the plan/memory modules. Every bad input ends in
one line naming the problem and the fix (exit code 2 for usage errors, 1 for a
failed start or a failed check), never in a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from launcher import __version__
from launcher.errors import LauncherError
from launcher.multinode_cli import multinode_options, status_options, stop_options
from loadgen.cli_errors import OneLineGroup

ENGINES = ["sim", "vllm", "sglang"]
EPILOG = """Examples:

\b
  loadgen-launch serve --engine sim --port 8000 --profile fast
  loadgen-launch serve --engine vllm --preset tiny-cpu --port 8000 --detach
  loadgen-launch plan --engine vllm --engine-version 0.8.2 --preset deepseek-r1-fp8-tp8-h20
  loadgen-launch check --model /mnt/models/DeepSeek-R1 --engine sglang --preset deepseek-r1-fp8-tp8-h20
  loadgen-launch diagnose server.log
  loadgen-launch status
  loadgen-launch stop --port 8000
"""


def _err(msg: str) -> None:
    click.echo(msg, err=True)


@click.group(cls=OneLineGroup, prog="loadgen-launch", deliberate=(LauncherError,),
             context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(__version__, prog_name="loadgen-launch")
def main() -> None:
    """Start, check, diagnose and stop inference servers (vllm, sglang, sim)."""


def plan_options(fn: Any) -> Any:
    """Options shared by serve, plan and check: everything build_plan takes."""
    opts = [
        click.option("--engine", type=click.Choice(ENGINES), default="sim", show_default=True, help="Which server to run."),
        click.option("--engine-version", "version", default=None, help="Engine release to render flags for (default: detected)."),
        click.option("--preset", default=None, help="Named deployment (a preset name or a JSON file)."),
        click.option("--model", default=None, help="Model directory (or name) to serve."),
        click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True),
        click.option("--host", default=None,
                     help="Address the server binds (default: 127.0.0.1 for sim; the preset's, else 0.0.0.0, for vllm/sglang)."),
        click.option("--gpus", default=None, help="GPUs to use: all, or device numbers like 0,1,2,3."),
        click.option("--docker", "docker_image", default=None, metavar="IMAGE", help="Run in this Docker image instead of natively."),
        click.option("--python", default=None, help="Python of the engine's environment (native mode)."),
        click.option("--engine-bin", default=None, help="The engine's executable, e.g. /opt/venv/bin/vllm (native mode)."),
        click.option("--served-model-name", default=None, help="Model name the API reports."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _build_plan(engine: str, version: str | None, preset: str | None, model: str | None, port: int, host: str | None,
                gpus: str | None, docker_image: str | None, python: str | None, engine_bin: str | None,
                served_model_name: str | None, extra: tuple[str, ...]) -> Any:
    from launcher.plan import PlanError, build_plan

    try:
        return build_plan(engine, version=version, preset=preset, model=model, port=port, host=host,
                          gpus=gpus, docker_image=docker_image, python=python, engine_bin=engine_bin,
                          extra_args=tuple(extra), served_model_name=served_model_name)
    except PlanError as exc:
        raise click.UsageError(str(exc)) from None


def _print_progress(progress: Any) -> None:
    _err(progress.describe())


# --- serve ---------------------------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, epilog=EPILOG)
@plan_options
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Server log file (default .loadgen/logs/ENGINE-PORT-TIME.log).")
@click.option("--ready-timeout", type=click.FloatRange(min=1), default=900, show_default=True,
              help="Seconds to wait for readiness (large models load for many minutes).")
@click.option("--detach", is_flag=True, help="Return once ready; leave the server running and write a state file.")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="State file that `status` and `stop` read (default .loadgen/servers/PORT.json); "
                   "a foreground serve removes it when it stops.")
@click.option("--no-preflight", is_flag=True, help="Skip the checkpoint and memory-plan checks before starting.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@click.argument("engine_args", nargs=-1, type=click.UNPROCESSED)
@multinode_options("serve")
def serve(engine: str, version: str | None, preset: str | None, model: str | None, port: int, host: str | None,
          gpus: str | None, docker_image: str | None, python: str | None, engine_bin: str | None,
          served_model_name: str | None, log_path: Path | None, ready_timeout: float, detach: bool,
          state_path: Path | None, no_preflight: bool, quiet: bool, engine_args: tuple[str, ...]) -> None:
    """Start a server, wait until it is ready, and keep it running until Ctrl-C.

    Options this command does not know (and everything after --) go to the
    engine unchanged, e.g. `serve --engine sim --profile fast`.
    """
    from launcher import process
    from launcher.lifecycle import LaunchError, start_plan

    extra = tuple(a for a in engine_args if a != "--")
    if docker_image is None:
        _check_program("--python", python)
        _check_program("--engine-bin", engine_bin)
    plan = _build_plan(engine, version, preset, model, port, host, gpus, docker_image, python, engine_bin,
                       served_model_name, extra)
    for warning in getattr(plan, "warnings", ()) or ():
        _err(f"warning: {warning}")
    if not quiet:
        _err(f"starting {engine}: {_shell(plan, docker_image is not None)}")
    state_path = state_path or process.default_state_path(int(plan.port))
    stop_requested: dict[str, int | None] = {"sig": None}

    def on_term(signum: int, _frame: Any) -> None:
        stop_requested["sig"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        server = start_plan(plan, engine=engine, model=model, log_path=log_path, ready_timeout_s=ready_timeout,
                            on_progress=None if quiet else _print_progress, run_preflight=not no_preflight,
                            state_path=state_path, die_with_parent=not detach)
    except LaunchError as exc:
        _err(f"loadgen-launch: error: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        _err("interrupted; the server was stopped")
        sys.exit(130 if stop_requested["sig"] is None else 128 + stop_requested["sig"])
    code: int | None = None
    try:
        click.echo(f"ready: {server.base_url} (pid {server.pid}, log {server.log_path})")
        if detach:
            click.echo(f"detached; state in {state_path} (stop with: loadgen-launch stop --state {state_path})")
            return
        _err("serving; press Ctrl-C to stop")
        while code is None:
            time.sleep(0.5)
            code = server.exit_code()
        if not state_path.exists():  # `loadgen-launch stop` removes the state file before it stops the server
            server.stop()
            _err(f"stopped by `loadgen-launch stop` (exit code {code})")
            return
    except KeyboardInterrupt:
        _err("stopping the server ...")
        server.stop()
        _err("stopped")
        sys.exit(130 if stop_requested["sig"] is None else 0)
    except BaseException:
        server.stop()
        raise
    server.stop()
    from launcher.diagnose import diagnose_file

    diag = diagnose_file(server.log_path, engine, start=server.log_offset)
    why = diag.summary() if diag.failed else "no known failure signature"
    _err(f"loadgen-launch: error: the server exited with code {code} while serving: {why}; log: {server.log_path}")
    sys.exit(1)


def _check_program(option: str, value: str | None) -> None:
    """An interpreter or executable given by hand must exist: never fall back to another engine silently."""
    if value is None:
        return
    found = shutil.which(value) if os.sep not in value else (value if os.access(value, os.X_OK) else None)
    if not found or os.path.isdir(found):
        example = "/opt/vllm/bin/python" if option == "--python" else "/opt/vllm/bin/vllm"
        raise click.UsageError(f"{option} {value} is not an executable file; point it at the engine's environment "
                               f"(e.g. {example}) or leave {option} out")


def _shell(plan: Any, docker: bool) -> str:
    """The command as one pasteable line, with secrets masked (it is printed)."""
    import shlex

    from launcher.redact import mask_argv, mask_env

    if docker and getattr(plan, "docker_argv", None):
        return shlex.join(mask_argv(plan.docker_argv))
    env = mask_env(getattr(plan, "env", None) or {})
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    cmd = shlex.join(mask_argv(plan.argv))
    return f"{prefix} {cmd}" if prefix else cmd


# --- stop / status --------------------------------------------------------------------


def _state_paths(port: int | None, state_path: Path | None, all_: bool) -> list[Path]:
    from launcher import process

    if state_path:
        return [state_path]
    if port is not None:
        return [process.default_state_path(port)]
    paths = process.list_states()
    if all_ or len(paths) == 1:
        return paths
    if not paths:
        raise click.UsageError(f"no servers recorded in {process.state_dir()}; give --state FILE or --port")
    raise click.UsageError(
        f"{len(paths)} servers recorded ({', '.join(p.stem for p in paths)}); pick one with --port, or use --all"
    )


@main.command()
@click.option("--port", type=int, default=None, help="Stop the server recorded for this port.")
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--all", "all_", is_flag=True, help="Stop every recorded server.")
@click.option("--timeout", type=click.FloatRange(min=0), default=15, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
@stop_options
def stop(port: int | None, state_path: Path | None, all_: bool, timeout: float) -> None:
    """Stop a recorded server, detached or foreground (SIGTERM to its group, then SIGKILL)."""
    from launcher import process

    failed = False
    for path in _state_paths(port, state_path, all_):
        try:
            state = process.read_state(path)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        was_alive = process.state_alive(state)
        path.unlink(missing_ok=True)  # first: a foreground `serve` owning it then knows the stop was asked for
        if state.container:
            process.docker_stop(state.container, timeout)
        ok = process.stop_tree(state.pgid, state.pid, timeout)
        if ok:
            process.remove_paths([Path(p) for p in state.cleanup])
            if was_alive:
                click.echo(f"stopped {state.engine} on port {state.port} (pid {state.pid})")
            else:
                click.echo(f"{state.engine} on port {state.port} (pid {state.pid}) was not running; "
                           f"removed its state file {path}")
        else:
            process.write_state(path, state)
            failed = True
            _err(f"loadgen-launch: error: processes of pid {state.pid} survived SIGKILL; see `ps -g {state.pgid}`")
    if failed:
        sys.exit(1)


@main.command()
@click.option("--port", type=int, default=None)
@click.option("--state", "state_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of text.")
@status_options
def status(port: int | None, state_path: Path | None, as_json: bool) -> None:
    """Show recorded servers (detached and foreground): alive or not, and their live health. Exit 1 if any is down."""
    from launcher import process
    from launcher.readiness import http_status

    paths = [state_path] if state_path else [process.default_state_path(port)] if port else process.list_states()
    if not paths:
        click.echo(f"no servers recorded in {process.state_dir()}")
        return
    down = False
    for path in paths:
        try:
            state = process.read_state(path)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        alive = process.state_alive(state)
        health = http_status(state.base_url + state.health_path, timeout_s=3) if alive else None
        down |= not alive or health != 200
        if as_json:
            click.echo(json.dumps({"state": str(path), "engine": state.engine, "port": state.port, "pid": state.pid,
                                   "alive": alive, "health": health, "base_url": state.base_url,
                                   "detached": state.detached,
                                   "log": state.log_path, "uptime_s": round(time.time() - state.started_at, 1)}))
        else:
            what = ("running" if alive else "DEAD") + ("" if state.detached else " (foreground serve)")
            click.echo(f"{state.engine} port {state.port}: {what}, pid {state.pid}, "
                       f"{state.health_path} -> {health if health is not None else 'no answer'}, "
                       f"up {time.time() - state.started_at:.0f}s, log {state.log_path}")
    if down:
        sys.exit(1)


# --- plan --------------------------------------------------------------------------------


@main.command(name="plan", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Print argv, env and docker argv as JSON.")
@click.argument("engine_args", nargs=-1, type=click.UNPROCESSED)
@multinode_options("plan")
def plan_cmd(engine: str, version: str | None, preset: str | None, model: str | None, port: int, host: str | None,
             gpus: str | None, docker_image: str | None, python: str | None, engine_bin: str | None,
             served_model_name: str | None, as_json: bool, engine_args: tuple[str, ...]) -> None:
    """Print the exact command (native and Docker) without running anything; warnings go to stderr.

    Secret values (--api-key, tokens) are shown as *** (see docs/launcher.md).
    """
    import shlex

    from launcher.redact import mask_argv, mask_env

    extra = tuple(a for a in engine_args if a != "--")
    plan = _build_plan(engine, version, preset, model, port, host, gpus, docker_image, python, engine_bin,
                       served_model_name, extra)
    for warning in getattr(plan, "warnings", ()) or ():
        _err(f"warning: {warning}")
    env = mask_env(getattr(plan, "env", None) or {})
    docker_argv = mask_argv(plan.docker_argv) if getattr(plan, "docker_argv", None) else None
    if as_json:
        click.echo(json.dumps({"argv": mask_argv(plan.argv), "env": env, "docker_argv": docker_argv,
                               "secret_files": list(getattr(plan, "secret_files", None) or ()),
                               "warnings": list(getattr(plan, "warnings", ()) or ())}, indent=1))
        return
    for path in getattr(plan, "secret_files", None) or ():
        click.echo(f"# {path} holds the api-key (serve writes it with mode 0600 and removes it at stop)")
    env_prefix = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())
    click.echo("# native")
    click.echo((env_prefix + " " if env_prefix else "") + shlex.join(mask_argv(plan.argv)))
    if docker_argv:
        click.echo("# docker")
        click.echo(shlex.join(docker_argv))
        name = getattr(plan, "docker_name", None)
        if name:
            click.echo(f"# stop with: docker stop {name}")
    spec = getattr(plan, "readiness", None)
    if spec is not None:
        ready = f"GET {spec.health_path} -> {spec.expected_status}"
        if getattr(spec, "ready_log", None) and not spec.health_meaningful:
            ready += f", or the log line /{spec.ready_log[0]}/"
        click.echo(f"# ready when: {ready}")


# --- check -------------------------------------------------------------------------------


@main.command()
@click.option("--model", default=None,
              help="Checkpoint directory to verify (also feeds the memory plan), or a known model name like deepseek-r1.")
@click.option("--write-manifest", is_flag=True, help="After a clean check, write checkpoint.sha256 (hashes every file).")
@click.option("--no-manifest", is_flag=True, help="Do not verify checkpoint.sha256 even if present.")
@click.option("--engine", type=click.Choice(["vllm", "sglang"]), default=None,
              help="Also print the memory plan for this engine.")
@click.option("--engine-version", "version", default=None)
@click.option("--preset", default=None, help="Preset whose flags (TP, memory fraction, context) the memory plan uses.")
@click.option("--gpus", type=click.IntRange(min=1), default=None, help="Number of GPUs (tensor parallel size).")
@click.option("--gpu-memory", type=click.FloatRange(min=0, min_open=True), default=None,
              help="GiB per GPU (default: from nvidia-smi).")
@click.option("--mem-fraction", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="--mem-fraction-static (SGLang) or --gpu-memory-utilization (vLLM); default: the preset's, else the engine's.")
@click.option("--context-len", type=click.IntRange(min=1), default=None, help="Context length for the concurrency figure.")
@click.option("--json", "as_json", is_flag=True, help="Print the checkpoint report as JSON.")
@multinode_options("check")
def check(model: str | None, write_manifest: bool, no_manifest: bool, engine: str | None, version: str | None,
          preset: str | None, gpus: int | None, gpu_memory: float | None, mem_fraction: float | None,
          context_len: int | None, as_json: bool) -> None:
    """Preflight: checkpoint integrity (offline) and, with --engine, the memory plan. Exit 1 on problems.

    A failed memory plan (e.g. SGLang's KV pool below zero) also exits 1.
    """
    from launcher import checkpoint_checks

    if write_manifest and no_manifest:
        raise click.UsageError("--write-manifest and --no-manifest contradict each other; pick one")
    model_dir = Path(model).expanduser() if model else None
    if model_dir is not None and not model_dir.is_dir():
        if engine is None or write_manifest or os.sep in (model or ""):
            raise click.UsageError(f"--model {model} is not a directory; give the local checkpoint folder")
        model_dir = None  # a model name: only the memory plan uses it
    if model_dir is None and engine is None:
        raise click.UsageError("nothing to check: give --model DIR (checkpoint integrity) and/or --engine (memory plan)")
    ok = True
    if model_dir is not None:
        mode = "write" if write_manifest else "skip" if no_manifest else "verify"
        hashing = write_manifest or (mode == "verify" and (model_dir / checkpoint_checks.MANIFEST_NAME).exists())
        report = checkpoint_checks.run_preflight(model_dir, manifest=mode,
                                         on_file=(lambda n: _err(f"hashing {n}")) if hashing else None)
        ok = report.ok
        if as_json:
            click.echo(json.dumps({"directory": str(model_dir), "layout": report.layout, "ok": report.ok,
                                   "shards": len(report.shards), "tensors": report.tensor_count,
                                   "bytes": report.total_bytes, "manifest": report.manifest,
                                   "problems": [{"file": p.file, "message": p.message} for p in report.problems]}))
        else:
            click.echo(report.summary())
            for problem in report.problems:
                click.echo(f"  BROKEN {problem}")
    if engine:
        from launcher.memory import plan_memory

        try:
            mplan = plan_memory(engine=engine, version=version, preset=preset, model=model, gpus=gpus,
                                gpu_memory_gib=gpu_memory, mem_fraction=mem_fraction, context_len=context_len)
        except ValueError as exc:
            raise click.UsageError(f"memory plan: {exc}") from None
        click.echo(mplan.describe(), err=as_json)
        ok = ok and mplan.ok
    if not ok:
        sys.exit(1)


# --- diagnose ------------------------------------------------------------------------------


@main.command()
@click.argument("logfile", type=click.Path(path_type=Path))
@click.option("--engine", type=click.Choice(ENGINES), default=None, help="Only this engine's signatures.")
@click.option("--json", "as_json", is_flag=True)
def diagnose(logfile: Path, engine: str | None, as_json: bool) -> None:
    """Explain a failed start from its log: what happened, the usual fix, the issue reference.

    Exit 1 when a fatal signature matched, 0 otherwise.
    """
    from launcher.diagnose import diagnose_file

    if not logfile.is_file():
        raise click.UsageError(f"log file {logfile} does not exist; pass the server's log (see `serve --log`)")
    diag = diagnose_file(logfile, engine)
    if as_json:
        click.echo(json.dumps({"failed": diag.failed,
                               "root_cause": diag.root_cause.signature.id if diag.root_cause else None,
                               "findings": [{"id": f.signature.id, "kind": f.signature.kind, "line": f.line_no,
                                             "text": f.line, "what": f.signature.what, "fix": f.signature.fix,
                                             "refs": list(f.signature.refs)} for f in diag.findings]}, indent=1))
    else:
        root = diag.root_cause
        if root is None:
            click.echo(f"{logfile}: no known failure signature")
        else:
            sig = root.signature
            click.echo(f"FAILED ({sig.id}, line {root.line_no}, phase: {sig.phase})")
            click.echo(f"  log:   {root.line[:300]}")
            click.echo(f"  what:  {sig.what}")
            click.echo(f"  fix:   {sig.fix}")
            if sig.refs:
                click.echo(f"  refs:  {', '.join(sig.refs)}")
        for f in diag.findings:
            if f is not root:
                click.echo(f"  {f.signature.kind}: {f.signature.id} (line {f.line_no}): {f.signature.what}")
    if diag.failed:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
