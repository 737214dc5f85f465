"""Shipped presets: each loads, renders for every known release of its engines, and can be copied."""

from __future__ import annotations

import json
import shutil
from importlib import resources

import pytest

from launcher.engines.flags import load_flagset, parse_args
from launcher.engines.versions import known_versions, resolve_version
from launcher.plan import PlanError, build_plan, list_presets, load_preset

IPV4_ONLY = ("", "10.0.0.5\n")


def test_shipped_presets():
    assert {"deepseek-r1-fp8-tp8-h20", "deepseek-r1-fp8-tp8", "tiny-cpu"} <= set(list_presets())


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_renders_for_every_known_release_of_its_engines(name):
    preset = load_preset(name)
    assert preset.description and preset.engines
    for engine, section in preset.engines.items():
        assert resolve_version(engine, section.version)  # its own version is readable
        for version in known_versions(engine):
            plan = build_plan(engine, version=version, preset=name, host_facts=IPV4_ONLY)
            # What we print must parse with the target release's flags (everything after the model).
            flags = plan.argv[plan.argv.index(plan.model) + 1 :]
            parsed = parse_args(load_flagset(engine, version), flags)
            assert {o.flag.name for o in parsed} >= {"--host", "--port"}


def test_field_report_preset_docker_sections():
    p = load_preset("deepseek-r1-fp8-tp8-h20")
    assert p.engines["vllm"].docker.image == "vllm/vllm-openai:v0.8.2"
    assert p.engines["sglang"].docker.image == "lmsysorg/sglang:ea52b45be1a7"
    for eng in ("vllm", "sglang"):
        opts = p.engines[eng].docker.options
        assert "--privileged" in opts and "--net=host" in opts and "/dev/shm:rw,nosuid,nodev,exec,size=128g" in opts
    assert p.hardware["gpu_count"] == 8


def test_a_user_copy_of_a_preset_works_by_path(tmp_path):
    src = resources.files("launcher").joinpath("presets", "deepseek-r1-fp8-tp8-h20.json")
    copy = tmp_path / "mine.json"
    with resources.as_file(src) as path:
        shutil.copy(path, copy)
    data = json.loads(copy.read_text())
    data["engines"]["vllm"]["args"] += ["--max-num-seqs", "64"]
    data["model"] = "/data/R1"
    copy.write_text(json.dumps(data))
    plan = build_plan("vllm", preset=str(copy), host_facts=IPV4_ONLY)
    assert plan.model == "/data/R1" and plan.argv[plan.argv.index("--max-num-seqs") + 1] == "64"
    assert plan.argv.count("--max-num-seqs") == 1


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"engines": {"tgi": {"version": "1"}}}', "unknown engine 'tgi'"),
        ('{"engines": {"vllm": {"args": []}}}', "needs a 'version'"),
        ('{"engines": {"vllm": {"version": "0.8.2", "args": "--x"}}}', "must be a list of strings"),
        ('{"engines": {"vllm": {"version": "0.8.2", "args": ["--no-such-flag"]}}, "model": "/m"}', "unknown flag --no-such-flag"),
        ('[1, 2]', "no 'engines' section"),
    ],
)
def test_broken_user_presets_are_named(tmp_path, content, needle):
    f = tmp_path / "p.json"
    f.write_text(content)
    with pytest.raises(PlanError) as err:
        build_plan("vllm", preset=str(f), host_facts=IPV4_ONLY)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_preset_file():
    with pytest.raises(PlanError, match="cannot read preset file"):
        load_preset("/nonexistent/preset.json")
