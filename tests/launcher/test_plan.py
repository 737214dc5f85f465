"""Command plans: the field report's commands, version translation, errors, Docker, host address.

The oracles are outside our code: the field report's own command lines, and the
verdicts the engines' real parsers gave on them (which flags each release rejects),
written down here as constants.
"""

from __future__ import annotations

import shlex
import sys

import pytest

from launcher.engines.flags import load_flagset, opts_to_dict, parse_args
from launcher.engines.versions import known_versions, resolve_version, version_key
from launcher.plan import Plan, PlanError, build_plan

# The field report's vLLM 0.8.2 command, as published (NOTES.md).
FIELD_VLLM = (
    "python3 -m vllm.entrypoints.openai.api_server --model /mnt/models/DeepSeek-R1 "
    "--gpu-memory-utilization 0.95 --tensor-parallel-size 8 --host 0.0.0.0 --trust-remote-code --port 8000 "
    "--max_num_seqs 256 --max-num-batched-tokens 16384 --max_model_len 4096 --max_seq_len_to_capture 16384 "
    "--tokenizer-mode auto --enable-chunked-prefill=False --enable-reasoning --reasoning-parser deepseek_r1 --enforce-eager"
)
# The field report's SGLang command.
FIELD_SGLANG = (
    "python3 -m sglang.launch_server --model-path /mnt/models/DeepSeek-R1 --host 0.0.0.0 --port 8000 "
    "--tensor-parallel-size 8 --trust-remote-code --tokenizer-mode auto --mem-fraction-static 0.90 "
    "--context-length 65536 --quantization fp8 --reasoning-parser deepseek-r1 --chunked-prefill-size 4096"
)
IPV4_ONLY = ("", "10.0.0.5\n")
DUAL_STACK = (
    "fe800000000000000000000000000001 02 40 20 80     eth0\n"
    "20010db8000000000000000000000002 02 40 00 80     eth0\n"
    "00000000000000000000000000000001 01 80 10 80       lo\n",
    "10.1.2.3 2001:db8::2 \n",
)


def flags_of(argv: list[str], engine: str, version: str, skip: int) -> dict:
    """Parse a command line's flags (after the entry point) with that release's flag data."""
    return opts_to_dict(parse_args(load_flagset(engine, version), argv[skip:], allow_positional=True))


def test_vllm_082_preset_is_the_field_report_command():
    plan = build_plan("vllm", version="0.8.2", preset="deepseek-r1-fp8-tp8-h20", host_facts=IPV4_ONLY)
    assert plan.argv[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    # plus the flag that makes usage report cached prompt tokens (reporting only, no change in serving)
    field = [*shlex.split(FIELD_VLLM), "--enable-prompt-tokens-details"]
    assert flags_of(plan.argv, "vllm", "0.8.2", 3) == flags_of(field, "vllm", "0.8.2", 3)
    assert plan.warnings == []
    assert plan.env == {}
    assert plan.port == 8000 and plan.host == "0.0.0.0"


def test_vllm_082_docker_reproduces_the_field_report_options():
    plan = build_plan("vllm", version="0.8.2", preset="deepseek-r1-fp8-tp8-h20", host_facts=IPV4_ONLY)
    d = plan.docker_argv
    assert d is not None and d[:2] == ["docker", "run"]
    text = shlex.join(d)
    for opt in ("--privileged", "--net=host", "--cap-add=SYS_PTRACE", "--security-opt seccomp=unconfined",
                "--tmpfs /dev/shm:rw,nosuid,nodev,exec,size=128g", "-v /ssd1/models:/mnt/models",
                "--gpus all", "--entrypoint ''", "-w /workspace", "--name vllm-deepseek-r1"):
        assert opt in text, opt
    image_at = d.index("vllm/vllm-openai:v0.8.2")
    assert d[image_at + 1 :] == plan.argv  # same engine command inside the container
    assert plan.docker_stop_argv == ["docker", "stop", "vllm-deepseek-r1"]
    assert "docker:" in plan.describe() and "native:" in plan.describe()


# What vLLM 0.33's real parser said about each flag of the field report's line.
REJECTED_BY_VLLM_033 = {"--max_seq_len_to_capture", "--enable-chunked-prefill=False", "--enable-reasoning"}


def _chunks(line: str) -> list[list[str]]:
    """Split a flag line into one chunk per option (option plus its values)."""
    toks = shlex.split(line)
    out: list[list[str]] = []
    for t in toks:
        if t.startswith("-") and not t.lstrip("-").isdigit():
            out.append([t])
        else:
            out[-1].append(t)
    return out


def test_flag_data_parser_rejects_what_the_real_vllm_033_parser_rejected():
    fs = load_flagset("vllm", "0.33.0")
    rejected = set()
    for chunk in _chunks(FIELD_VLLM.split(" ", 3)[3]):
        try:
            parse_args(fs, chunk)
        except PlanError:
            rejected.add(chunk[0])
    assert rejected == REJECTED_BY_VLLM_033


def test_same_preset_for_vllm_033_parses_and_keeps_the_meaning():
    plan = build_plan("vllm", version="0.33.0", preset="deepseek-r1-fp8-tp8-h20", host_facts=IPV4_ONLY)
    assert plan.argv[:3] == ["vllm", "serve", "/mnt/models/DeepSeek-R1"]
    for bad in ("--enable-reasoning", "--max_seq_len_to_capture", "--max-seq-len-to-capture", "--enable-chunked-prefill=False"):
        assert bad not in plan.argv
    assert "--no-enable-chunked-prefill" in plan.argv
    got = flags_of(plan.argv, "vllm", "0.33.0", 2)
    assert got["model_tag"] == "/mnt/models/DeepSeek-R1"
    assert got["--enable-chunked-prefill"] is False
    assert got["--max-num-seqs"] == "256" and got["--max-model-len"] == "4096"
    assert got["--max-num-batched-tokens"] == "16384" and got["--tensor-parallel-size"] == "8"
    assert got["--reasoning-parser"] == "deepseek_r1" and got["--enforce-eager"] is True
    dropped = " ".join(plan.warnings)
    assert "--enable-reasoning" in dropped and "--max_seq_len_to_capture" in dropped
    # The preset's image is vLLM 0.8.2: no Docker command for 0.33 unless an image is given.
    assert plan.docker_argv is None
    with_image = build_plan("vllm", version="0.33.0", preset="deepseek-r1-fp8-tp8-h20", docker_image="vllm/vllm-openai:latest", host_facts=IPV4_ONLY)
    assert with_image.docker_argv is not None and "vllm/vllm-openai:latest" in with_image.docker_argv


def test_sglang_preset_is_the_field_report_command():
    plan = build_plan("sglang", preset="deepseek-r1-fp8-tp8-h20", host_facts=IPV4_ONLY)
    assert plan.version == "0.4.5"
    field = shlex.split(FIELD_SGLANG)
    assert flags_of(plan.argv, "sglang", "0.4.5", 3) == flags_of(field, "sglang", "0.4.5", 3)
    assert plan.readiness.health_path == "/health_generate"
    assert plan.readiness.health_meaningful is False
    assert any("fired up and ready" in r for r in plan.readiness.ready_log)
    assert plan.docker_argv is not None and "lmsysorg/sglang:ea52b45be1a7" in plan.docker_argv


@pytest.mark.parametrize("version", ["0.4.4.post1", "0.4.5", "0.5.23"])
def test_sglang_commands_use_hyphens_and_its_reasoning_parser_name(version):
    plan = build_plan("sglang", version=version, preset="deepseek-r1-fp8-tp8-h20", host_facts=IPV4_ONLY)
    flags = [a for a in plan.argv if a.startswith("--")]
    assert all("_" not in f for f in flags), flags
    assert plan.argv[plan.argv.index("--reasoning-parser") + 1] == "deepseek-r1"


def test_vllm_section_rendered_for_sglang_translates_names_and_values(tmp_path):
    preset = tmp_path / "only-vllm.json"
    preset.write_text(
        '{"name": "only-vllm", "model": "/m", "engines": {"vllm": {"version": "0.8.2", "args": '
        '["--tensor-parallel-size", "8", "--max_model_len", "4096", "--reasoning-parser", "deepseek_r1", '
        '"--enable-chunked-prefill=False", "--gpu-memory-utilization", "0.95", "--enforce-eager"]}}}'
    )
    plan = build_plan("sglang", version="0.4.5", preset=str(preset), host_facts=IPV4_ONLY)
    got = flags_of(plan.argv, "sglang", "0.4.5", 3)
    assert got["--reasoning-parser"] == "deepseek-r1"
    assert got["--context-length"] == "4096"
    assert got["--tensor-parallel-size"] == "8"
    assert got["--chunked-prefill-size"] == "-1"
    assert got["--disable-cuda-graph"] is True
    assert "--gpu-memory-utilization" not in plan.argv
    assert any("--gpu-memory-utilization" in w for w in plan.warnings)


def test_current_recipes_render_for_their_versions():
    v = build_plan("vllm", preset="deepseek-r1-fp8-tp8", host_facts=IPV4_ONLY)
    assert v.version == "0.33.0" and v.warnings == []
    assert v.argv[:2] == ["vllm", "serve"] and "--enable-expert-parallel" in v.argv
    s = build_plan("sglang", preset="deepseek-r1-fp8-tp8", host_facts=IPV4_ONLY)
    assert s.version == "0.5.23" and "--quantization" not in s.argv
    assert s.readiness.health_meaningful is True


# ------------------------------------------------------------------ user flags


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--enable-reasoning"], "not a flag of vllm 0.33.0"),
        (["--max_seq_len_to_capture", "8192"], "not a flag of vllm 0.33.0"),
        (["--enable-chunked-prefill=False"], "--no-enable-chunked-prefill"),
        (["--enable-chunked-prefill", "False"], "unexpected value 'False'"),
        (["--max-num-seqz", "8"], "did you mean --max-num-seqs"),
        (["--max-num", "8"], "ambiguous"),
        (["--max-model-len", "long"], "expects an integer"),
        (["--tp", "8"], "unknown flag --tp"),
        (["--dtype", "fp64"], "invalid value 'fp64'"),
    ],
)
def test_bad_user_flags_for_vllm_033_fail_before_launch(extra, needle):
    with pytest.raises(PlanError) as err:
        build_plan("vllm", version="0.33.0", model="/m", extra_args=extra, host_facts=IPV4_ONLY)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize(
    "version, extra, needle",
    [
        ("0.4.5", ["--mem_fraction_static", "0.9"], "did you mean --mem-fraction-static"),
        ("0.4.5", ["--reasoning-parser", "deepseek_r1"], "did you mean deepseek-r1"),
        ("0.5.23", ["--enable-ep-moe"], "not a flag of sglang 0.5.23"),
        ("0.5.23", ["--cuda-graph-max-bs", "64"], "ambiguous"),
    ],
)
def test_bad_user_flags_for_sglang_fail_before_launch(version, extra, needle):
    with pytest.raises(PlanError) as err:
        build_plan("sglang", version=version, model="/m", extra_args=extra, host_facts=IPV4_ONLY)
    assert needle in str(err.value)


def test_user_flags_override_the_preset_and_vllm_spellings_are_accepted():
    plan = build_plan(
        "vllm", version="0.33.0", preset="deepseek-r1-fp8-tp8-h20",
        extra_args=["--max_num_seqs", "32", "--max-model-len", "8k", "--port", "9001"], host_facts=IPV4_ONLY,
    )
    got = flags_of(plan.argv, "vllm", "0.33.0", 2)
    assert got["--max-num-seqs"] == "32" and got["--max-model-len"] == "8k"
    assert plan.port == 9001 and got["--port"] == "9001"
    assert plan.argv.count("--max-num-seqs") == 1 and plan.argv.count("--port") == 1


def test_prefix_abbreviation_is_spelled_out():
    plan = build_plan("sglang", version="0.4.5", model="/m", extra_args=["--tp", "4"], host_facts=IPV4_ONLY)
    assert plan.argv[plan.argv.index("--tensor-parallel-size") + 1] == "4"
    assert "--tp" not in plan.argv


def test_unknown_preset_engine_and_version_are_one_line_errors(tmp_path):
    with pytest.raises(PlanError, match="unknown preset 'deepseek-r1-fp8-tp8-h2'; did you mean"):
        build_plan("vllm", preset="deepseek-r1-fp8-tp8-h2")
    with pytest.raises(PlanError, match="unknown engine"):
        build_plan("tgi", model="/m")
    with pytest.raises(PlanError, match="cannot read engine version"):
        build_plan("vllm", version="latest", model="/m")
    with pytest.raises(PlanError, match="no model"):
        build_plan("vllm", version="0.33.0", host_facts=IPV4_ONLY)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        build_plan("vllm", preset=str(bad))
    with pytest.raises(PlanError, match="has no section for sim|no 'engines'"):
        (tmp_path / "e.json").write_text('{"name": "e"}')
        build_plan("vllm", preset=str(tmp_path / "e.json"))


def test_a_release_between_known_ones_borrows_the_nearest_and_says_so():
    assert resolve_version("vllm", "0.32.0+cpu").data == "0.32.0"
    assert resolve_version("vllm", "0.32.0+cpu").note is None
    assert resolve_version("vllm", "0.31.1").data == "0.32.0"
    assert resolve_version("vllm", "0.40.0").data == "0.33.0"
    assert resolve_version("vllm", "0.9.2").data == "0.8.2"
    assert resolve_version("sglang", "0.4.4.post1").note is None
    assert resolve_version("sglang", "0.5.0").data == "0.5.23"
    plan = build_plan("vllm", version="0.34.1", model="/m", host_facts=IPV4_ONLY)
    assert plan.data_version == "0.33.0" and any("nearest known release 0.33.0" in w for w in plan.warnings)
    assert known_versions("vllm") == ["0.7.2", "0.8.2", "0.32.0", "0.33.0"]
    assert version_key("0.4.4.post1") > version_key("0.4.4")


def test_tiny_cpu_preset_is_the_local_cpu_vllm_command(monkeypatch, tmp_path):
    monkeypatch.setenv("LOADGEN_VLLM_VENV", str(tmp_path / "vv"))
    plan = build_plan("vllm", preset="tiny-cpu", port=8123, host_facts=DUAL_STACK)
    assert plan.argv[:3] == [str(tmp_path / "vv/bin/vllm"), "serve", str(tmp_path / "vv/models/tiny-r1")]
    got = flags_of(plan.argv, "vllm", "0.32.0", 2)
    assert got == {
        "model_tag": str(tmp_path / "vv/models/tiny-r1"), "--host": "127.0.0.1", "--port": "8123",
        "--served-model-name": ["tiny-r1"], "--dtype": "float32", "--max-model-len": "2048",
        "--max-num-seqs": "64", "--enforce-eager": True, "--enable-prompt-tokens-details": True,
    }
    assert plan.version == "0.32.0" and plan.data_version == "0.32.0"
    assert [w for w in plan.warnings if "dual-stack" not in w] == []
    # The preset pins 127.0.0.1; on a dual-stack host HOST_IP follows it instead of the host's address.
    assert plan.env["VLLM_HOST_IP"] == "127.0.0.1" and plan.env["HOST_IP"] == "127.0.0.1"
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert plan.readiness.health_path == "/health"


def test_dual_stack_host_pins_vllm_host_ip_to_the_first_address():
    plan = build_plan("vllm", version="0.8.2", preset="deepseek-r1-fp8-tp8-h20", host_facts=DUAL_STACK, environ={})
    assert plan.env == {"VLLM_HOST_IP": "10.1.2.3", "HOST_IP": "10.1.2.3"}
    assert plan.shell().startswith("VLLM_HOST_IP=10.1.2.3 HOST_IP=10.1.2.3 python3 -m vllm")
    assert "-e" in plan.docker_argv and "VLLM_HOST_IP=10.1.2.3" in plan.docker_argv
    v4 = build_plan("vllm", version="0.8.2", preset="deepseek-r1-fp8-tp8-h20", host_facts=IPV4_ONLY, environ={})
    assert v4.env == {}
    sg = build_plan("sglang", preset="deepseek-r1-fp8-tp8-h20", host_facts=DUAL_STACK, environ={})
    assert sg.env == {}
    mine = build_plan("vllm", version="0.8.2", preset="deepseek-r1-fp8-tp8-h20", host_facts=DUAL_STACK,
                      environ={"VLLM_HOST_IP": "10.9.9.9"})
    assert mine.env == {"HOST_IP": "10.9.9.9"}


def test_gpus_select_devices_and_must_cover_tensor_parallelism():
    plan = build_plan("vllm", version="0.8.2", preset="deepseek-r1-fp8-tp8-h20", gpus="0,1,2,3,4,5,6,7", host_facts=IPV4_ONLY)
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert plan.docker_argv[plan.docker_argv.index("--gpus") + 1] == '"device=0,1,2,3,4,5,6,7"'
    with pytest.raises(PlanError, match="tensor parallel size 8 needs 8 GPUs"):
        build_plan("vllm", version="0.8.2", preset="deepseek-r1-fp8-tp8-h20", gpus="0,1", host_facts=IPV4_ONLY)
    with pytest.raises(PlanError, match="--gpus"):
        build_plan("vllm", version="0.8.2", preset="deepseek-r1-fp8-tp8-h20", gpus="first", host_facts=IPV4_ONLY)


def test_python_and_engine_bin_pick_the_entry_point():
    p = build_plan("vllm", version="0.8.2", model="/m", python="/opt/py/bin/python", host_facts=IPV4_ONLY)
    assert p.argv[:4] == ["/opt/py/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model"]
    b = build_plan("vllm", version="0.33.0", model="/m", engine_bin="/opt/v/bin/vllm", host_facts=IPV4_ONLY)
    assert b.argv[:3] == ["/opt/v/bin/vllm", "serve", "/m"]
    s = build_plan("sglang", version="0.4.5", model="/m", python="/opt/s/bin/python3", host_facts=IPV4_ONLY)
    assert s.argv[:5] == ["/opt/s/bin/python3", "-m", "sglang.launch_server", "--model-path", "/m"]
    with pytest.raises(PlanError, match="no console command"):
        build_plan("sglang", version="0.4.5", model="/m", engine_bin="/opt/s/bin/sglang", host_facts=IPV4_ONLY)


def test_version_is_detected_from_the_engine_environment(tmp_path):
    # A real interpreter with a real (metadata-only) distribution named vllm.
    site = tmp_path / "site"
    dist = site / "vllm-0.9.2.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.9.2\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    plan = build_plan("vllm", model="/m", python=str(wrapper), host_facts=IPV4_ONLY)
    assert plan.version == "0.9.2" and plan.data_version == "0.8.2"


def test_sim_plan():
    plan = build_plan("sim", port=9100, host="127.0.0.1", extra_args=["--profile", "fast"])
    assert plan.argv == [sys.executable, "-P", "-m", "launcher.sim", "--host", "127.0.0.1", "--port", "9100", "--profile", "fast"]
    assert plan.readiness.health_path == "/health" and plan.readiness.expected_status == 200
    assert isinstance(plan, Plan) and plan.docker_argv is None


def test_shell_quotes_and_round_trips():
    plan = build_plan("vllm", version="0.33.0", model="/models/my model", served_model_name="r1 test",
                      extra_args=["--chat-template", "{{ x }}"], host_facts=IPV4_ONLY)
    assert shlex.split(plan.shell()) == plan.argv
    assert plan.to_dict()["shell"] == plan.shell()


def test_vllm_api_key_goes_by_environment_never_on_a_command_line() -> None:
    p = build_plan("vllm", model="/m", version="0.33.0", extra_args=["--api-key", "sk-4711"],
                   docker_image="vllm/vllm-openai:v0.33.0", environ={}, host_facts=("", ""))
    assert p.env["VLLM_API_KEY"] == "sk-4711"
    assert "sk-4711" not in " ".join(p.argv) and "sk-4711" not in " ".join(p.docker_argv or [])
    assert "VLLM_API_KEY" in p.docker_argv  # `-e NAME`: Docker reads the value from the client's environment
    two = build_plan("vllm", model="/m", version="0.33.0", extra_args=["--api-key", "a", "b"], environ={},
                     host_facts=("", ""))
    assert "VLLM_API_KEY" not in two.env and "--api-key" in two.argv  # several keys have no environment form
