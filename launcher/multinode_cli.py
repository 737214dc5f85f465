"""``--nodes`` for ``loadgen-launch plan``, ``serve``, ``check`` and ``stop``.

Each command's single-node code stays as it is: :func:`multinode_options` wraps
it, adds the multi-node options, and takes over only when a deployment spans
several machines (``--nodes N`` or a preset with ``"nodes": N``). Usage errors
are one line, like everywhere in the CLI.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from launcher.engines.errors import PlanError

MULTINODE_KEYS = ("nodes", "node_addr", "multinode", "gpus_per_node", "ifname", "ssh")


def _options(kind: str) -> list[Any]:
    opts = [
        click.option("--nodes", type=click.IntRange(min=1), default=None,
                     help="Machines the server spans (default: the preset's); with 2 or more, per-node commands."),
        click.option("--gpus-per-node", type=click.IntRange(min=1), default=None,
                     help="GPUs on each node (default: the preset's hardware, else 8)."),
        click.option("--multinode", default=None, metavar="MODE",
                     help="vllm: ray | native | dp-ep; sglang: tp | dp-ep (default: the preset's, else the release's native form)."),
    ]
    if kind != "check":
        opts += [
            click.option("--node-addr", default=None, metavar="HOST[,HOST...]",
                         help="Each node's address (USER@HOST for ssh), head first."),
            click.option("--ifname", default=None, metavar="IF",
                         help="Network interface for NCCL/Gloo on every node (sets NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME)."),
        ]
    if kind == "serve":
        opts.append(click.option("--ssh", is_flag=True, help="Start each node over the system's ssh (your keys and config)."))
    return opts


def multinode_options(kind: str):
    """Decorator: add the ``--nodes`` options to a command and route multi-node calls to this module."""

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            mn = {k: kwargs.pop(k, None) for k in MULTINODE_KEYS}
            if not _wants_multinode(kind, mn, kwargs):
                if mn.get("ssh") or mn.get("node_addr"):
                    raise click.UsageError("--ssh and --node-addr need --nodes 2 or more (or a multi-node preset)")
                return fn(**kwargs)
            return {"plan": plan_multinode, "serve": serve_multinode, "check": check_multinode}[kind](mn, kwargs)

        for opt in reversed(_options(kind)):
            command = opt(command)
        return command

    return wrap


def _preset_nodes(preset: str | None) -> int:
    if not preset:
        return 1
    from launcher.plan import load_preset

    try:
        return load_preset(preset).nodes
    except PlanError as exc:
        raise click.UsageError(str(exc)) from None


def _wants_multinode(kind: str, mn: dict, kwargs: dict) -> bool:
    nodes = mn.get("nodes")
    if nodes is not None:
        return nodes >= 2
    return _preset_nodes(kwargs.get("preset")) >= 2


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _build(mn: dict, kw: dict, extra: tuple[str, ...]) -> Any:
    from launcher.multinode import build_multinode_plan

    if kw.get("gpus"):
        raise click.UsageError("--gpus selects devices on one machine; with --nodes use --gpus-per-node N")
    try:
        return build_multinode_plan(
            kw["engine"], nodes=mn.get("nodes"), node_addrs=mn.get("node_addr"), mode=mn.get("multinode"),
            gpus_per_node=mn.get("gpus_per_node"), version=kw.get("version"), preset=kw.get("preset"),
            model=kw.get("model"), port=kw["port"], host=kw["host"], docker_image=kw.get("docker_image"),
            python=kw.get("python"), engine_bin=kw.get("engine_bin"), extra_args=extra,
            served_model_name=kw.get("served_model_name"), ifname=mn.get("ifname"),
        )
    except PlanError as exc:
        raise click.UsageError(str(exc)) from None


def plan_multinode(mn: dict, kw: dict) -> None:
    extra = tuple(a for a in kw.get("engine_args", ()) if a != "--")
    plan = _build(mn, kw, extra)
    for warning in plan.warnings:
        _err(f"warning: {warning}")
    if kw.get("as_json"):
        click.echo(json.dumps(plan.to_json(), indent=1))
        return
    click.echo(plan.describe())


def serve_multinode(mn: dict, kw: dict) -> None:
    """Start every node (ssh or local), wait for the head, stream the logs, stop everything on Ctrl-C."""
    import signal

    from launcher.cluster import ClusterError, start_cluster
    from launcher.transport import LocalTransport, SshTransport

    extra = tuple(a for a in kw.get("engine_args", ()) if a != "--")
    if not mn.get("node_addr"):
        raise click.UsageError("serve --nodes needs --node-addr HOST,HOST,... (head first)")
    plan = _build(mn, kw, extra)
    remote = [n.target for n in plan.nodes if not n.is_loopback]
    if remote and not mn.get("ssh"):
        raise click.UsageError(f"{', '.join(remote)} {'is' if len(remote) == 1 else 'are'} not this machine; "
                               "pass --ssh to start the nodes over ssh")
    for warning in plan.warnings:
        _err(f"warning: {warning}")
    transport = SshTransport() if mn.get("ssh") else LocalTransport()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = Path(kw["log_path"]) if kw.get("log_path") else Path.cwd() / ".loadgen" / "logs" / f"{plan.engine}-{plan.port}-{stamp}"
    quiet = kw.get("quiet")
    docker = kw.get("docker_image") is not None

    def on_line(label: str, line: str) -> None:
        if not quiet:
            _err(f"[{label}] {line}")

    stop_requested: dict[str, int | None] = {"sig": None}

    def on_term(signum: int, _frame: Any) -> None:
        stop_requested["sig"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if not quiet:
        _err(f"starting {plan.engine} on {len(plan.nodes)} nodes ({transport.name}); logs in {log_dir}")
    try:
        cluster = start_cluster(plan, transport=transport, log_dir=log_dir, ready_timeout_s=kw["ready_timeout"],
                                docker=docker, on_line=on_line, tied=not kw.get("detach"))
    except ClusterError as exc:
        _err(f"loadgen-launch: error: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        _err("interrupted; every node was stopped")
        sys.exit(130)
    from launcher.cluster import write_cluster_state

    dead = None
    state = None
    try:  # from the ready line on, a Ctrl-C stops every node
        # The same state a detached cluster leaves: after a SIGKILL of this process, `status` and `stop` find every node.
        state = write_cluster_state(cluster, kw.get("state_path"), detached=bool(kw.get("detach")))
        click.echo(f"ready: {plan.base_url} ({len(plan.nodes)} nodes, logs in {log_dir})")
        if kw.get("detach"):
            click.echo(f"detached; state in {state} (stop with: loadgen-launch stop --state {state})")
            return
        _err(f"serving; press Ctrl-C to stop every node (state in {state})")
        while dead is None:
            time.sleep(0.5)
            cluster.pump()
            dead = cluster.exited()
    except KeyboardInterrupt:
        _err("stopping every node ...")
        problems = cluster.stop()
        for p in problems:
            _err(f"loadgen-launch: error: {p}")
        _err("stopped" if not problems else "some processes survived")
        _forget(state, problems)
        sys.exit(1 if problems else 130 if stop_requested["sig"] is None else 0)
    except BaseException:
        _forget(state, cluster.stop())
        raise
    if state is not None and not state.exists():  # `loadgen-launch stop` removed it, then stopped the nodes
        _forget(state, cluster.stop())
        _err("stopped by loadgen-launch stop")
        sys.exit(0)
    why = cluster.failure() or f"{dead.label} exited"
    _forget(state, cluster.stop())
    _err(f"loadgen-launch: error: a node stopped while serving: {why}")
    sys.exit(1)


def _forget(state: Path | None, problems: list[str]) -> None:
    """Remove the cluster's state once every node is stopped (kept when something survived, for `stop`)."""
    if state is not None and not problems:
        state.unlink(missing_ok=True)


def check_multinode(mn: dict, kw: dict) -> None:
    """The memory plan for 1 node and for N nodes side by side; exit 1 when the N-node plan fails."""
    from launcher.memory import plan_memory
    from launcher.multinode import multinode_data

    engine = kw.get("engine")
    if engine is None:
        raise click.UsageError("check --nodes needs --engine vllm|sglang (the memory plan is per engine)")
    nodes = mn.get("nodes") or _preset_nodes(kw.get("preset"))
    gpus = mn.get("gpus_per_node") or kw.get("gpus") or _preset_gpus(kw.get("preset")) or 8
    mode = mn.get("multinode") or _preset_mode(kw.get("preset"), engine) or ("tp" if engine == "sglang" else "native")
    shape = multinode_data()["modes"].get(engine, {}).get(mode, {}).get("parallel")
    if shape not in ("tp", "tp_pp"):
        raise click.UsageError(f"no memory plan for --multinode {mode!r} (data parallel is not modelled); use "
                               + ("tp" if engine == "sglang" else "native or ray"))
    common = dict(engine=engine, version=kw.get("version"), model=kw.get("model"), gpu_memory_gib=kw.get("gpu_memory"),
                  mem_fraction=kw.get("mem_fraction"), context_len=kw.get("context_len"))
    if kw.get("preset") and _preset_nodes(kw["preset"]) == 1:
        common["preset"] = kw["preset"]
    elif kw.get("preset"):
        for k, v in _preset_memory_inputs(kw["preset"], engine, kw.get("version")).items():
            if common.get(k) is None:
                common[k] = v
    rows = []
    try:
        for n in sorted({1, nodes}):
            tp, pp = (gpus * n, 1) if shape == "tp" or n == 1 else (gpus, n)
            rows.append((n, plan_memory(tp=tp, pp=pp, nodes=n, **common)))
    except ValueError as exc:
        raise click.UsageError(f"memory plan: {exc}") from None
    click.echo(f"memory plan per node count ({engine}, {gpus} GPUs per node, multi-node mode {mode}):")
    click.echo(f"  {'nodes':>5} {'GPUs':>5} {'layout':>12} {'weights/GPU':>12} {'fraction':>9} {'KV pool/GPU':>12} {'KV tokens':>10}  verdict")
    for n, m in rows:
        layout = f"TP {m.tp}" + (f" x PP {m.pp}" if m.pp > 1 else "")
        click.echo(f"  {n:>5} {n * gpus:>5} {layout:>12} {m.weights_gib_per_gpu:>8.2f} GiB {m.fraction:>9.2f} "
                   f"{m.kv_pool_gib_per_gpu:>8.2f} GiB {m.kv_tokens:>10}  {m.verdict.upper()}")
    click.echo("")
    click.echo(rows[-1][1].describe())
    if rows[-1][1].fails:
        sys.exit(1)


def _preset_gpus(preset: str | None) -> int | None:
    if not preset:
        return None
    from launcher.plan import load_preset

    return load_preset(preset).hardware.get("gpu_count")


def _preset_mode(preset: str | None, engine: str) -> str | None:
    if not preset:
        return None
    from launcher.plan import load_preset

    section = load_preset(preset).engines.get(engine)
    return section.multinode_mode if section else None


def _preset_memory_inputs(preset: str, engine: str, version: str | None) -> dict:
    """Context, fraction, KV dtype and batch tokens from a multi-node preset's flags (TP/PP come from --nodes)."""
    from launcher.memory import memory_kwargs_from_plan
    from launcher.plan import build_plan

    try:
        implied = memory_kwargs_from_plan(build_plan(engine, version=version, preset=preset, host_facts=("", "")))
    except PlanError as exc:
        raise click.UsageError(str(exc)) from None
    return {k: implied[k] for k in ("context_len", "mem_fraction", "kv_dtype_bytes", "max_num_batched_tokens", "mtp", "version", "model")
            if implied.get(k) is not None}


def stop_options(fn: Any) -> Any:
    """Decorator for ``stop``: a detached multi-node server (its state in the clusters folder) is stopped here."""

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        from launcher.cluster import cluster_state_paths, is_cluster_state, stop_cluster_state

        port, state_path, all_ = kwargs.get("port"), kwargs.get("state_path"), kwargs.get("all_")
        if state_path is not None and is_cluster_state(Path(state_path)):
            paths = [Path(state_path)]
        else:
            paths = cluster_state_paths(port, bool(all_))
        if not paths:
            return fn(**kwargs)
        failed = False
        for path in paths:
            try:
                problems, what = stop_cluster_state(path, kwargs.get("timeout", 15))
            except ValueError as exc:
                raise click.UsageError(str(exc)) from None
            for problem in problems:
                _err(f"loadgen-launch: error: {problem}")
            failed |= bool(problems)
            if not problems:
                click.echo(f"stopped {what}")
        if all_:
            return fn(**kwargs)
        if failed:
            sys.exit(1)
        return None

    return command


def status_options(fn: Any) -> Any:
    """Decorator for ``status``: recorded multi-node servers (detached or foreground) are listed first, node by node."""

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        from launcher import process
        from launcher.cluster import cluster_state_paths, cluster_status, is_cluster_state

        port, state_path, as_json = kwargs.get("port"), kwargs.get("state_path"), kwargs.get("as_json")
        if state_path is not None:
            paths = [Path(state_path)] if is_cluster_state(Path(state_path)) else []
        else:
            paths = cluster_state_paths(port, all_=port is None)
        down = False
        for path in paths:
            try:
                st = cluster_status(path)
            except ValueError as exc:
                raise click.UsageError(str(exc)) from None
            down |= not st["alive"] or st["health"] != 200
            if as_json:
                click.echo(json.dumps(st))
                continue
            up = sum(n["alive"] for n in st["nodes"])
            how = "detached" if st["detached"] else (
                "foreground serve" + ("" if st["launcher_alive"] else f", its launcher (pid {st['launcher_pid']}) is gone"))
            click.echo(f"{st['engine']} cluster port {st['port']}: {'running' if st['alive'] else 'DOWN'} ({how}), "
                       f"{up}/{len(st['nodes'])} node process groups alive, /health -> {st['health'] or 'no answer'}, "
                       f"logs {st['log_dir']}" + ("" if st["alive"] else f"; stop with: loadgen-launch stop --state {path}"))
        single = state_path is None and (process.default_state_path(port).exists() if port is not None
                                         else bool(process.list_states()))
        if paths and not single:
            sys.exit(1 if down else 0)
        fn(**kwargs)
        if down:
            sys.exit(1)

    return command
