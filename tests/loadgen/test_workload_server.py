"""Built lengths against a real server on 127.0.0.1 (the sim, which counts with the
real tokenizer the way vLLM does): every request's ``usage.prompt_tokens`` equals
the built length, and ``verify_with_server`` catches client/server skew."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.records import RequestRecord
from loadgen.workload import (
    WorkloadSpec,
    build_prompts,
    prompt_token_mismatches,
    verify_with_server,
)
from loadgen.workload.tokenizer import bundled_tokenizer_dir
from tests.conftest import serve_text, tokenizer_with_template

N = 256
MODEL = "deepseek-r1"


# ``private_cache`` and ``tok`` come from conftest.py.
pytestmark = pytest.mark.usefixtures("private_cache")


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_every_request_uses_exactly_n_prompt_tokens(sim_fast, tok, chat: bool) -> None:
    spec = WorkloadSpec(num_prompts=24, input_len=N, output_len=2, chat=chat, range_ratio=0.0, seed=21)
    prompts = build_prompts(spec, tok, use_cache=False)
    for p in prompts:
        if chat:
            body = {"model": MODEL, "messages": p.messages, "max_tokens": 2}
            usage = _post(sim_fast.base_url + "/v1/chat/completions", body)["usage"]
        else:
            body = {"model": MODEL, "prompt": p.text, "max_tokens": 2}
            usage = _post(sim_fast.base_url + "/v1/completions", body)["usage"]
        assert usage["prompt_tokens"] == p.input_len == N, p.id


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_verification_agrees_with_a_matching_server(sim_fast, tok, chat: bool) -> None:
    prompts = build_prompts(WorkloadSpec(num_prompts=40, input_len=300, range_ratio=0.5, chat=chat, seed=2), tok)
    result = verify_with_server(sim_fast.base_url + "/v1", MODEL, prompts, sample=8)
    assert result.supported and result.ok, result.message
    assert result.checked == 8 and result.mismatches == []


def _skewed_tokenizer(folder: Path) -> Path:
    """The R1 tokenizer with half of its BPE merges: another tokenizer version, in effect.

    The field trap (``tokenizer_class: LlamaTokenizerFast`` making transformers 5 rebuild
    the pre-tokenizer) no longer reproduces with our transformers, which detects the
    byte-level tokenizer.json. A pre-tokenizer skew (GPT-2's regex instead of R1's: digit
    runs and CJK split differently) would not show on random prompts, which are made of
    space-led ASCII pieces both split alike; a vocabulary skew does.
    """
    src = bundled_tokenizer_dir()
    folder.mkdir()
    spec = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    merges = spec["model"]["merges"]
    spec["model"]["merges"] = merges[: len(merges) // 2]
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_bytes((src / "tokenizer_config.json").read_bytes())
    return folder


def test_skewed_server_tokenizer_is_caught_with_cause_and_fix(sim_server, tok, tmp_path: Path) -> None:
    server = sim_server("--tokenizer", str(_skewed_tokenizer(tmp_path / "skewed")))
    prompts = build_prompts(WorkloadSpec(num_prompts=16, input_len=N, seed=3), tok)
    result = verify_with_server(server.base_url, MODEL, prompts, sample=8)
    assert result.supported and not result.ok
    assert result.mismatches and result.max_diff > 0
    pid, built, counted = result.mismatches[0]
    assert built == N and counted != N
    msg = result.message
    assert "\n" not in msg
    assert f"loadgen built {N}" in msg and "tokenizer version or config" in msg and "fix:" in msg


def test_chat_template_skew_is_named(sim_server, tok, tmp_path: Path) -> None:
    folder = tokenizer_with_template(
        tmp_path / "other-template",
        "{{ bos_token }}{% for m in messages %}<｜User｜>{{ m['content'] }}{% endfor %}<｜Assistant｜><think>\n")
    server = sim_server("--tokenizer", str(folder))
    prompts = build_prompts(WorkloadSpec(num_prompts=8, input_len=64, chat=True, seed=4), tok)
    result = verify_with_server(server.base_url, MODEL, prompts, sample=8)
    assert not result.ok and "chat template" in result.message
    diffs = {s - b for _i, b, s in result.mismatches}
    assert len(result.mismatches) == 8 and len(diffs) == 1 and diffs.pop() > 0  # same extra tokens on every prompt


def test_wrong_model_name_is_not_mistaken_for_a_missing_endpoint(sim_fast, tok) -> None:
    prompts = build_prompts(WorkloadSpec(num_prompts=2, input_len=16), tok)
    result = verify_with_server(sim_fast.base_url, "no-such-model", prompts)
    assert result.supported and not result.ok
    assert "404" in result.message and "--model" in result.message


@pytest.fixture
def plain_server() -> Iterator[str]:
    """A server that answers 404 to everything, /tokenize included."""
    with serve_text(lambda path: (404, b"Not Found")) as root:
        yield root


def test_server_without_tokenize_is_reported_unsupported(plain_server: str, tok) -> None:
    prompts = build_prompts(WorkloadSpec(num_prompts=2, input_len=16), tok)
    result = verify_with_server(plain_server, MODEL, prompts)
    assert not result.supported and "no /tokenize" in result.message


def test_unreachable_server_is_unsupported_not_a_crash(tok) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prompts = build_prompts(WorkloadSpec(num_prompts=2, input_len=16), tok)
    result = verify_with_server(f"http://127.0.0.1:{port}", MODEL, prompts, timeout_s=2)
    assert not result.supported and not result.ok and "could not reach" in result.message


def test_mismatch_summary_over_records() -> None:
    records = [
        RequestRecord(prompt_id=0, input_len=256, output_len=8, server_prompt_tokens=256),
        RequestRecord(prompt_id=1, input_len=256, output_len=8, server_prompt_tokens=259),
        RequestRecord(prompt_id=2, input_len=256, output_len=8, server_prompt_tokens=None),
        RequestRecord(prompt_id=3, input_len=128, output_len=8, server_prompt_tokens=127),
    ]
    summary = prompt_token_mismatches(records)
    assert (summary.compared, summary.mismatched, summary.max_abs_diff) == (3, 2, 3)
    assert summary.examples == ((1, 256, 259), (3, 128, 127)) and not summary.ok
    assert prompt_token_mismatches(records[:1]).ok
