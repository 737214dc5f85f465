"""Plans for one server spread over several machines: every node's commands, in start order.

A two-node DeepSeek-R1 start fails in ways a one-node start cannot: a Ray worker
that registered another IP than ``VLLM_HOST_IP``, a rank given twice, a
dist-init address that is not the head's, a model path missing on one machine.
Each of those is a property of the *set* of per-node commands, so this module
computes that set as data, from one description (engine, release, preset,
node addresses), and checks it as a whole before anything runs. Each node's
engine command is an ordinary :class:`launcher.plan.Plan` built with the
per-rank flags, so it is checked against the release's flags exactly like a
single-node plan. Nothing here starts a process: :mod:`launcher.cluster` runs a
plan through a :mod:`launcher.transport`.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from launcher.engines.errors import PlanError
from launcher.engines.flags import data_json, load_flagset
from launcher.plan import Plan, build_plan, docker_run_argv, load_preset

SIM_READY_LOG = r"sim: serving model"


@cache
def multinode_data() -> dict:
    return data_json("multinode.json")


def modes_for(engine: str) -> list[str]:
    if engine == "sim":
        return ["sim"]
    return list(multinode_data()["modes"].get(engine, {}))


_USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")  # '_': ssh config aliases use it


def host_problem(host: str) -> str | None:
    """Why ``host`` is not an IPv4/IPv6 address or a host name (RFC 1123 labels), or None."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        return None
    if bare.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(bare)
        except ValueError:
            return f"{host!r} is not an IPv4 address (four numbers 0-255)"
        return None
    if not bare or len(bare) > 253 or not all(_LABEL.fullmatch(label) for label in bare.rstrip(".").split(".")):
        return f"{host!r} is not a host name (letters, digits, '-' and '.' only)"
    return None


@dataclass(frozen=True)
class NodeAddr:
    """Where a node is: the ssh target (may carry ``user@``) and the address the engines use."""

    target: str
    address: str

    @classmethod
    def parse(cls, text: str) -> NodeAddr:
        text = text.strip()
        if not text or text.startswith("-") or any(c.isspace() for c in text):
            raise PlanError(f"--node-addr entry {text!r} is not a host; give HOST or USER@HOST, comma-separated, head first")
        user, _, host = text.rpartition("@")
        problem = host_problem(host)
        if user and not _USER.fullmatch(user):
            problem = f"the user {user!r} is not a login name"
        if problem:
            raise PlanError(f"--node-addr entry {text!r}: {problem}; give HOST or USER@HOST with HOST an IPv4 or IPv6 "
                            "address or a host name, comma-separated, head first")
        return cls(text, host[1:-1] if host.startswith("[") else host)

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            return False
        return True

    @property
    def is_loopback(self) -> bool:
        if self.address == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.address).is_loopback
        except ValueError:
            return False


def parse_node_addrs(spec: str | Sequence[str] | None, nodes: int) -> tuple[list[NodeAddr], list[str]]:
    """The node list, head first; placeholders (NODE0_IP, ...) when none is given, for printing a plan."""
    if spec is None or spec == "" or spec == []:
        return [NodeAddr(f"NODE{r}_IP", f"NODE{r}_IP") for r in range(nodes)], [
            "no --node-addr given: the commands use NODE0_IP, NODE1_IP, ... as placeholders for the nodes' addresses"
        ]
    items = [s for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    addrs = [NodeAddr.parse(s) for s in items]
    if len(addrs) != nodes:
        raise PlanError(f"--node-addr lists {len(addrs)} address(es) for --nodes {nodes}; give one per node, head first")
    return addrs, []


@dataclass
class NodeCommand:
    """One process on one node. Started in ``order``; ``wait_log`` gates the next start."""

    rank: int
    node: NodeAddr
    role: str  # ray-head | ray-worker | server (serves HTTP) | worker (a rank without HTTP) | sim
    argv: list[str]
    env: dict[str, str]
    docker_argv: list[str] | None = None
    wait_log: str | None = None  # regex: the next command starts once this line is in this one's log
    cleanup_argv: list[str] | None = None  # run on the node after stopping (ray stop)
    docker_cleanup_argv: list[str] | None = None  # docker stop NAME
    engine_argv: bool = False  # argv is the engine's own command line (checked by its parser)
    serves_http: bool = False

    @property
    def label(self) -> str:
        return f"node{self.rank}:{self.role}"

    def shell(self, docker: bool = False) -> str:
        if docker and self.docker_argv:
            return shlex.join(self.docker_argv)
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{prefix} {shlex.join(self.argv)}" if prefix else shlex.join(self.argv)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "host": self.node.address, "ssh_target": self.node.target, "role": self.role,
            "argv": list(self.argv), "env": dict(self.env), "docker_argv": self.docker_argv,
            "wait_log": self.wait_log, "cleanup_argv": self.cleanup_argv, "docker_cleanup_argv": self.docker_cleanup_argv,
        }


@dataclass
class MultiNodePlan:
    """Every node's commands for one server, in start order, plus how to tell the whole is ready."""

    engine: str
    version: str
    mode: str
    nodes: list[NodeAddr]
    gpus_per_node: int
    head: Plan  # the rank-0 engine plan: port, readiness, model, the single-node JSON fields
    rank_plans: list[Plan]
    commands: list[NodeCommand]
    warnings: list[str] = field(default_factory=list)
    parallel: dict[str, int] = field(default_factory=dict)  # tp, pp, dp as planned

    @property
    def readiness(self):
        return self.head.readiness

    @property
    def port(self) -> int:
        return self.head.port

    @property
    def head_command(self) -> NodeCommand:
        return next(c for c in self.commands if c.serves_http)

    @property
    def base_url(self) -> str:
        host = self.nodes[0].address
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def for_rank(self, rank: int) -> list[NodeCommand]:
        return [c for c in self.commands if c.rank == rank]

    def describe(self, docker: bool = False) -> str:
        """What ``plan --nodes`` prints: each command in start order with its node, env and waits."""
        about = multinode_data()["modes"].get(self.engine, {}).get(self.mode, {}).get("about", "one sim per node")
        par = " x ".join(f"{k.upper()} {v}" for k, v in self.parallel.items())
        lines = [
            f"# {self.engine} {self.version} on {len(self.nodes)} nodes x {self.gpus_per_node} GPUs, mode {self.mode}"
            + (f" ({par})" if par else ""),
            f"# {about}",
        ]
        if self.head.preset:
            lines.append(f"# preset: {self.head.preset}")
        for i, cmd in enumerate(self.commands, 1):
            lines += ["", f"# {i}. node {cmd.rank} ({cmd.node.target}) — {cmd.role}"]
            lines.append(cmd.shell())
            if cmd.docker_argv:
                lines += ["# docker:", shlex.join(cmd.docker_argv)]
            if cmd.wait_log:
                lines.append(f"# then wait for the log line /{cmd.wait_log}/")
        r = self.readiness
        ready = f"GET {self.base_url}{r.health_path} -> {r.expected_status}"
        if r.ready_log and not r.health_meaningful:
            ready += f", or the head's log line /{r.ready_log[0]}/"
        lines += ["", f"# ready when: {ready}", "# stop: every node's process group (last started first)"]
        cleanups = [(c, c.docker_cleanup_argv or c.cleanup_argv) for c in reversed(self.commands)]
        for cmd, argv in cleanups:
            if argv:
                lines.append(f"#   then on node {cmd.rank}: {shlex.join(argv)}")
        return "\n".join(lines)

    def nodes_json(self) -> list[dict[str, Any]]:
        """``"nodes"`` of ``plan --json``: per rank its main command (the engine's where it runs one)."""
        out = []
        for rank, node in enumerate(self.nodes):
            cmds = self.for_rank(rank)
            main = next((c for c in cmds if c.engine_argv), cmds[-1])
            out.append({
                "rank": rank, "host": node.address, "ssh_target": node.target, "role": main.role,
                "argv": list(main.argv), "env": dict(main.env), "docker_argv": main.docker_argv,
                "commands": [c.to_dict() for c in cmds],
            })
        return out

    def to_json(self) -> dict[str, Any]:
        """Today's single-node object (the head's plan) plus ``nodes``, ``order`` and ``mode``."""
        h = self.head
        return {
            "argv": [str(a) for a in h.argv], "env": dict(h.env),
            "docker_argv": [str(a) for a in h.docker_argv] if h.docker_argv else None,
            "warnings": list(self.warnings), "mode": self.mode, "engine": self.engine, "version": self.version,
            "parallel": dict(self.parallel), "base_url": self.base_url,
            "nodes": self.nodes_json(), "order": [c.label for c in self.commands],
        }


# ------------------------------------------------------------------ per-rank flags (pure)


def _int_opt(options: dict[str, Any], *names: str) -> int | None:
    for n in names:
        if options.get(n) not in (None, ""):
            return int(str(options[n]))
    return None


def parallel_sizes(engine: str, mode: str, options: dict[str, Any], nodes: int, gpus: int) -> dict[str, int]:
    """TP/PP/DP for the whole cluster, from the flags already given (checked) or the mode's default."""
    total = nodes * gpus
    tp = _int_opt(options, "--tensor-parallel-size", "--tp-size")
    pp = _int_opt(options, "--pipeline-parallel-size", "--pp-size")
    parallel = multinode_data()["modes"][engine][mode]["parallel"]
    if parallel == "tp_pp":
        if tp is None and pp is None:
            tp, pp = gpus, nodes
        elif tp is None:
            assert pp is not None
            tp = total // pp
        elif pp is None:
            pp = max(1, total // tp)
        assert tp is not None and pp is not None
        if tp * pp != total:
            raise PlanError(
                f"tensor parallel {tp} x pipeline parallel {pp} = {tp * pp} GPUs, but {nodes} nodes x {gpus} GPUs = {total}; "
                f"use TP {gpus} x PP {nodes} (or TP {total}), or fix --gpus-per-node"
            )
        return {"tp": tp, "pp": pp}
    if parallel == "tp":
        tp = tp or total
        if tp != total or (pp or 1) != 1:
            raise PlanError(f"SGLang mode {mode} spans all {total} GPUs with one TP group: drop the TP/PP flags or pass TP {total}")
        return {"tp": tp}
    # dp: one DP rank per TP group, TP groups inside a node
    tp = tp or 1
    if gpus % tp:
        raise PlanError(f"tensor parallel {tp} does not divide the {gpus} GPUs of a node; pick a divisor")
    return {"tp": tp, "dp": total // tp, "dp_local": gpus // tp}


def _first_known(flags: Any, choices: Sequence[Sequence[str]]) -> list[str] | None:
    for group in choices:
        if all(flags.lookup(f) for f in group):
            return list(group)
    return None


def rank_flags(engine: str, mode: str, rank: int, nodes: int, head: str, par: dict[str, int], flags: Any,
               ports: dict[str, int]) -> list[str]:
    """The flags that make rank ``rank``'s engine command part of the cluster (pure)."""
    if engine == "vllm" and mode == "ray":
        return ["--tensor-parallel-size", str(par["tp"]), "--pipeline-parallel-size", str(par["pp"]),
                "--distributed-executor-backend", "ray"]
    if engine == "vllm" and mode == "native":
        out = ["--tensor-parallel-size", str(par["tp"]), "--pipeline-parallel-size", str(par["pp"]),
               "--nnodes", str(nodes), "--node-rank", str(rank), "--master-addr", head,
               "--master-port", str(ports["vllm_master"])]
        return out + (["--headless"] if rank else [])
    if engine == "vllm" and mode == "dp-ep":
        out = ["--tensor-parallel-size", str(par["tp"]), "--data-parallel-size", str(par["dp"]),
               "--data-parallel-size-local", str(par["dp_local"]), "--data-parallel-address", head,
               "--data-parallel-rpc-port", str(ports["vllm_dp_rpc"]), "--enable-expert-parallel"]
        return out + (["--headless", "--data-parallel-start-rank", str(rank * par["dp_local"])] if rank else [])
    if engine == "sglang":
        out = ["--tp-size" if flags.lookup("--tp-size") else "--tensor-parallel-size", str(par["tp"]),
               "--nnodes", str(nodes), "--node-rank", str(rank), "--dist-init-addr", f"{head}:{ports['sglang_dist_init']}"]
        if mode == "dp-ep":
            facts = multinode_data()["modes"]["sglang"]["dp-ep"]
            dp = _first_known(flags, facts["dp_attention"])
            ep = _first_known(flags, facts["expert_parallel"])
            if dp is None or ep is None:
                raise PlanError(f"{flags.label} has no DP-attention/expert-parallel flags; use --multinode tp")
            out += [dp[0], str(nodes)] if len(dp) == 1 else [dp[0], dp[1], str(nodes)]
            out += [ep[0], str(par["tp"])] if ep[0] == "--ep-size" else [ep[0]]
        return out
    raise PlanError(f"no multi-node mode {mode!r} for {engine}")


# Flags the plan sets per rank; a preset or extra argument setting them would fight the plan.
PER_RANK_FLAGS = ("--nnodes", "--node-rank", "--master-addr", "--headless", "--dist-init-addr",
                  "--data-parallel-start-rank", "--data-parallel-address", "--distributed-executor-backend")


def _ray_bin(python: str | None, engine_bin: str | None) -> str:
    """Ray's CLI from the engine's environment (it is a vLLM dependency), else the one on PATH."""
    for exe in (engine_bin, python):
        if exe and "/" in exe:
            return str(Path(exe).parent / "ray")
    return "ray"


def _node_env(base: dict[str, str], *, vllm_ip: str | None, ifname: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(base)
    if vllm_ip is not None:
        env["VLLM_HOST_IP"] = vllm_ip
        env.pop("HOST_IP", None)
    if ifname:
        for name in multinode_data()["ifname_env"]:
            env.setdefault(name, ifname)
    env.update(extra or {})
    return env


def build_multinode_plan(
    engine: str,
    *,
    nodes: int | None = None,
    node_addrs: str | Sequence[str] | None = None,
    mode: str | None = None,
    gpus_per_node: int | None = None,
    version: str | None = None,
    preset: str | None = None,
    model: str | None = None,
    port: int = 8000,
    host: str = "0.0.0.0",
    docker_image: str | None = None,
    python: str | None = None,
    engine_bin: str | None = None,
    extra_args: Sequence[str] = (),
    served_model_name: str | None = None,
    ifname: str | None = None,
    ports: dict[str, int] | None = None,
) -> MultiNodePlan:
    """The per-node commands for ``engine`` on ``nodes`` machines, head (rank 0) first.

    ``node_addrs``: one address per node (``USER@HOST`` for ssh); None gives
    placeholders, for printing. ``mode`` defaults to the preset's, else the
    engine's native multi-node form when the release has it (vLLM ``--nnodes``,
    SGLang ``--dist-init-addr``), else Ray for vLLM. Every engine command is a
    full :func:`launcher.plan.build_plan` for its rank, so flags are checked
    against the release, and the set is checked for rank/address agreement.
    """
    pre = load_preset(preset) if preset else None
    nodes = nodes or (pre.nodes if pre else None)
    if not nodes or nodes < 2:
        raise PlanError("a multi-node plan needs --nodes 2 or more (or a preset with \"nodes\": 2)")
    addrs, warnings = parse_node_addrs(node_addrs, nodes)
    gpus = gpus_per_node or int((pre.hardware.get("gpu_count") if pre else None) or 8)
    if gpus < 1:
        raise PlanError(f"--gpus-per-node {gpus}: give 1 or more")
    ports = {**multinode_data()["ports"], **(ports or {})}
    common: dict[str, Any] = dict(version=version, preset=preset, model=model, host=host, docker_image=docker_image, python=python,
                  engine_bin=engine_bin, served_model_name=served_model_name, host_facts=("", ""), key_by_file=False)
    if engine == "sim":
        return _sim_plan(addrs, port, extra_args, common, warnings)

    base = build_plan(engine, port=port, extra_args=tuple(extra_args), **common)
    warnings += [w for w in base.warnings if w not in warnings]
    target = load_flagset(engine, base.data_version or base.version)
    section = pre.engines.get(engine) if pre else None
    mode = mode or (section.multinode_mode if section else None) or _default_mode(engine, target)
    known = modes_for(engine)
    if mode not in known:
        raise PlanError(f"unknown --multinode {mode!r} for {engine}; choose one of {', '.join(known)}")
    missing = [f for f in multinode_data()["modes"][engine][mode]["needs"] if not target.lookup(f)]
    if missing:
        others = [m for m in known if m != mode and all(target.lookup(f) for f in multinode_data()["modes"][engine][m]["needs"])]
        alt = f"; use --multinode {others[0]}" if others else ""
        raise PlanError(f"{target.label} has no {', '.join(missing)} (needed by --multinode {mode}){alt}")
    clash = [f for f in PER_RANK_FLAGS if f in base.options]
    if clash:
        raise PlanError(f"do not pass {', '.join(clash)}: the multi-node plan sets it per node (use --node-addr and --multinode)")
    if len({a.address for a in addrs}) < len(addrs):
        warnings.append("two nodes share an address: their ranks would compete for the same GPUs and ports")
    if engine == "vllm" and not all(a.is_ip for a in addrs):
        warnings.append("VLLM_HOST_IP is set to each node's --node-addr; give IP addresses (the ones Ray and NCCL use), not host names")
    par = parallel_sizes(engine, mode, base.options, nodes, gpus)
    head = addrs[0].address

    rank_plans = []
    for r in range(nodes):
        flags = rank_flags(engine, mode, r, nodes, head, par, target, ports)
        rank_plans.append(build_plan(engine, port=port, extra_args=(*extra_args, *flags), **common))
    commands = (_ray_commands if engine == "vllm" and mode == "ray" else _rank_commands)(
        engine, addrs, rank_plans, ifname=ifname, ports=ports, python=python, engine_bin=engine_bin)
    plan = MultiNodePlan(engine=engine, version=base.version, mode=mode, nodes=addrs, gpus_per_node=gpus,
                         head=rank_plans[0], rank_plans=rank_plans, commands=commands, warnings=warnings,
                         parallel={k: v for k, v in par.items() if k != "dp_local"})
    problems = consistency_problems(plan)
    if problems:
        raise PlanError("the per-node commands disagree: " + "; ".join(problems))
    return plan


def _default_mode(engine: str, target: Any) -> str:
    for mode in multinode_data()["default_mode"][engine]:
        if all(target.lookup(f) for f in multinode_data()["modes"][engine][mode]["needs"]):
            return mode
    return multinode_data()["default_mode"][engine][-1]


def _docker_name(plan: Plan, rank: int) -> str:
    return f"{plan.docker_name or f'loadgen-{plan.engine}-{plan.port}'}-node{rank}"


def _rank_commands(engine: str, addrs: list[NodeAddr], plans: list[Plan], *, ifname: str | None, ports: dict[str, int],
                   python: str | None, engine_bin: str | None) -> list[NodeCommand]:
    """vLLM native / DP and SGLang: the same engine command per rank; rank 0 serves HTTP."""
    out = []
    for r, (node, plan) in enumerate(zip(addrs, plans, strict=True)):
        env = _node_env(plan.env, vllm_ip=node.address if engine == "vllm" else None, ifname=ifname)
        docker = None
        name = _docker_name(plan, r)
        if plan.image and plan.container_argv:
            docker = docker_run_argv(name, plan.docker_options, env, plan.image, plan.container_argv)
        out.append(NodeCommand(
            rank=r, node=node, role="server" if r == 0 else "worker", argv=list(plan.argv), env=env, docker_argv=docker,
            docker_cleanup_argv=["docker", "stop", name] if docker else None, engine_argv=True, serves_http=r == 0,
        ))
    return out


def _ray_commands(engine: str, addrs: list[NodeAddr], plans: list[Plan], *, ifname: str | None, ports: dict[str, int],
                  python: str | None, engine_bin: str | None) -> list[NodeCommand]:
    """vLLM over Ray: Ray head, Ray workers (each waited for), then one server on the head."""
    facts = multinode_data()["ray"]
    head_plan = plans[0]
    ray = _ray_bin(python or None, engine_bin)
    head_addr = f"{addrs[0].address}:{ports['ray']}"
    out = []
    for r, node in enumerate(addrs):
        env = _node_env({k: v for k, v in head_plan.env.items() if k != "CUDA_VISIBLE_DEVICES"},
                        vllm_ip=node.address, ifname=ifname)
        if "CUDA_VISIBLE_DEVICES" in head_plan.env:
            env["CUDA_VISIBLE_DEVICES"] = head_plan.env["CUDA_VISIBLE_DEVICES"]
        tail = ["--head", f"--port={ports['ray']}"] if r == 0 else [f"--address={head_addr}"]
        args = ["start", *tail, f"--node-ip-address={node.address}", "--block"]
        docker = None
        name = _docker_name(head_plan, r)
        if head_plan.image:
            docker = docker_run_argv(name, head_plan.docker_options, env, head_plan.image, ["ray", *args])
        out.append(NodeCommand(
            rank=r, node=node, role="ray-head" if r == 0 else "ray-worker", argv=[ray, *args], env=env,
            docker_argv=docker, wait_log=facts["head_ready_log" if r == 0 else "worker_ready_log"],
            cleanup_argv=[ray, "stop"], docker_cleanup_argv=["docker", "stop", name] if docker else None,
        ))
    server_env = _node_env(head_plan.env, vllm_ip=addrs[0].address, ifname=ifname, extra={"RAY_ADDRESS": head_addr})
    docker = None
    if head_plan.image and head_plan.container_argv:
        exec_env = [x for k, v in server_env.items() if k != "CUDA_VISIBLE_DEVICES" for x in ("-e", f"{k}={v}")]
        docker = ["docker", "exec", *exec_env, _docker_name(head_plan, 0), *head_plan.container_argv]
    out.append(NodeCommand(rank=0, node=addrs[0], role="server", argv=list(head_plan.argv), env=server_env,
                           docker_argv=docker, engine_argv=True, serves_http=True))
    return out


def _sim_plan(addrs: list[NodeAddr], port: int, extra_args: Sequence[str], common: dict, warnings: list[str]) -> MultiNodePlan:
    """Our emulator as a stand-in cluster: one sim per node, each on port + rank (nodes may share a host)."""
    plans, commands = [], []
    for r, node in enumerate(addrs):
        kw = {k: v for k, v in common.items() if k in ("preset", "python")}
        plan = build_plan("sim", port=port + r, host=node.address, extra_args=tuple(extra_args), **kw)
        plans.append(plan)
        commands.append(NodeCommand(rank=r, node=node, role="server" if r == 0 else "sim", argv=list(plan.argv),
                                    env=dict(plan.env), wait_log=SIM_READY_LOG, engine_argv=True, serves_http=r == 0))
    return MultiNodePlan(engine="sim", version=plans[0].version, mode="sim", nodes=addrs, gpus_per_node=0,
                         head=plans[0], rank_plans=plans, commands=commands, warnings=warnings)


def consistency_problems(plan: MultiNodePlan) -> list[str]:
    """What would make the nodes fail to meet: ranks, world size, rendezvous address, sizes, model.

    Read back from the rendered commands (not from what we meant to render), so
    it also holds for plans edited by hand or built from a preset's extra flags.
    """
    if plan.engine == "sim":
        return []
    from launcher.engines.flags import parse_args

    target = load_flagset(plan.engine, plan.head.data_version or plan.version)
    seen: dict[str, list[Any]] = {}
    problems = []
    for p in plan.rank_plans:
        names = {o.flag.name: o.value for o in parse_args(target, _flags_of(p))}
        for key in ("--nnodes", "--dist-init-addr", "--master-addr", "--master-port", "--tensor-parallel-size",
                    "--tp-size", "--pipeline-parallel-size", "--data-parallel-size", "--data-parallel-address",
                    "--data-parallel-rpc-port"):
            seen.setdefault(key, []).append(names.get(key))
        seen.setdefault("model", []).append(p.model)
        rank = names.get("--node-rank")
        start = names.get("--data-parallel-start-rank")
        seen.setdefault("rank", []).append(rank if rank is not None else start)
    for key, values in seen.items():
        if key == "rank":
            ranks = [v for v in values if v is not None]
            if ranks and len(set(map(str, ranks))) != len(ranks):
                problems.append(f"a rank is given twice ({', '.join(map(str, ranks))})")
        elif len({str(v) for v in values}) > 1:
            problems.append(f"{key} differs between nodes ({', '.join(map(str, values))})")
    nn = seen.get("--nnodes", [None])[0]
    if nn is not None and int(str(nn)) != len(plan.nodes):
        problems.append(f"--nnodes {nn} but {len(plan.nodes)} nodes are planned")
    return problems


def _flags_of(plan: Plan) -> list[str]:
    """The engine flags after the entry point, model flag included (what the release's parser sees)."""
    argv = plan.argv
    for flag in ("--model-path", "--model"):
        if flag in argv:
            return argv[argv.index(flag) :]
    return argv[argv.index(plan.model) + 1 :] if plan.model in argv else argv
