"""Our SGLang command lines through SGLang's real argument parser (side venv, no GPU needed).

Set up once with ``python -m launcher.engines.sglang_parser install`` (SGLang 0.4.5,
the release of the field report's image) and optionally
``... install --version 0.5.23 --venv .venv-sglang-0.5.23``. Tests skip, saying so,
when no such venv exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.engines import sglang_parser
from launcher.engines.errors import PlanError
from launcher.engines.flags import load_flagset, parse_args
from launcher.engines.versions import resolve_version
from launcher.plan import build_plan, list_presets, load_preset
from tests.launcher.conftest import PROBES, chunks


def side_venvs() -> list[Path]:
    root = sglang_parser.project_root()
    found = sorted(root.glob(".venv-sglang*"))
    if os.environ.get("LOADGEN_SGLANG_VENV"):
        found.append(Path(os.environ["LOADGEN_SGLANG_VENV"]))
    return [v for v in found if sglang_parser.installed_version(v)]


VENVS = side_venvs()
pytestmark = pytest.mark.skipif(
    not VENVS, reason="no SGLang parser venv; run: python -m launcher.engines.sglang_parser install"
)


def flags_after_model(plan) -> list[str]:
    """The argv the real parser sees: everything after `python3 -m sglang.launch_server`."""
    return plan.argv[3:]


@pytest.mark.parametrize("venv", VENVS, ids=lambda v: v.name)
def test_preset_commands_are_accepted_by_the_real_parser(venv):
    version = sglang_parser.installed_version(venv)
    plans = []
    for name in list_presets():
        if "sglang" in load_preset(name).engines:
            plans.append(build_plan("sglang", version=version, preset=name, host_facts=("", "")))
    plans.append(build_plan("sglang", version=version, model="/m", port=30001, served_model_name="r1",
                            extra_args=["--tp", "2", "--kv-cache-dtype", "fp8_e4m3"], host_facts=("", "")))
    results = sglang_parser.check([flags_after_model(p) for p in plans], venv)
    for plan, r in zip(plans, results, strict=False):
        assert r.ok, f"{plan.shell()} -> {r.error}"
    field = results[[p.preset for p in plans].index("deepseek-r1-fp8-tp8-h20")].args
    tp = field.get("tp_size") or field.get("tensor_parallel_size")
    assert tp == 8 and field["mem_fraction_static"] == 0.9 and field["context_length"] == 65536
    assert field["reasoning_parser"] == "deepseek-r1" and field["chunked_prefill_size"] == 4096
    assert field["port"] == 8000 and field["model_path"] == "/mnt/models/DeepSeek-R1"
    extra = results[-1].args
    assert (extra.get("tp_size") or extra.get("tensor_parallel_size")) == 2
    assert extra["served_model_name"] == "r1" and extra["port"] == 30001


@pytest.mark.parametrize("venv", VENVS, ids=lambda v: v.name)
def test_our_flag_data_and_the_real_parser_agree_chunk_by_chunk(venv):
    version = sglang_parser.installed_version(venv)
    data_version = resolve_version("sglang", version).data
    line, _ = PROBES[("sglang", "0.5.23" if data_version == "0.5.23" else "0.4.5")]
    parts = chunks(line) + [["--enable-chunked-prefill"], ["--reasoning-parser", "deepseek_r1"], ["--tp-size", "two"]]
    real = sglang_parser.check([["--model-path", "/m", *c] for c in parts], venv)
    fs = load_flagset("sglang", data_version)
    for chunk, r in zip(parts, real, strict=True):
        try:
            parse_args(fs, chunk)
            ours = True
        except PlanError:
            ours = False
        assert ours == r.ok, f"{chunk}: ours={ours} real={r.ok} ({r.error})"


def test_install_is_idempotent_and_reports_the_version():
    venv = VENVS[0]
    version = sglang_parser.installed_version(venv)
    assert sglang_parser.install(version, venv) == venv
    assert sglang_parser.main(["check", "--venv", str(venv), "--", "--model-path", "/m", "--port", "1"]) == 0
    assert sglang_parser.main(["check", "--venv", str(venv), "--", "--model-path", "/m", "--mem_fraction_static", "0.9"]) == 1
