"""ShareGPT and JSONL sources load from the fixtures, with server-exact input lengths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.workload import WorkloadError, WorkloadSpec, build_prompts, check_lengths
from tests.conftest import FIXTURES as FIXTURE_ROOT

FIXTURES = FIXTURE_ROOT / "workload"
SHAREGPT = FIXTURES / "sharegpt_small.json"
PROMPTS = FIXTURES / "prompts.jsonl"
MESSAGES = FIXTURES / "messages.jsonl"


# ``private_cache`` and ``tok`` come from conftest.py.
pytestmark = pytest.mark.usefixtures("private_cache")


def _first_human_turns() -> dict[str, str]:
    """Prompt text -> the reply after it, read straight from the fixture."""
    out = {}
    for entry in json.loads(SHAREGPT.read_text(encoding="utf-8")):
        turns = entry["conversations"]
        for i, t in enumerate(turns[:-1]):
            if t["from"] == "human":
                out[t["value"]] = turns[i + 1]["value"]
                break
    return out


@pytest.mark.parametrize("chat", [False, True])
def test_sharegpt_fixture_loads_first_human_turn_and_reply_length(tok, chat: bool) -> None:
    spec = WorkloadSpec(dataset="sharegpt", dataset_path=str(SHAREGPT), num_prompts=8, chat=chat, seed=1)
    prompts = build_prompts(spec, tok)
    pairs = _first_human_turns()
    assert len(prompts) == 8 and [p.id for p in prompts] == list(range(8))
    for p in prompts:
        question = p.messages[0]["content"] if chat else p.text
        assert question in pairs
        assert p.output_len == len(tok.encode(pairs[question], add_special_tokens=False))
        assert p.input_len >= spec.min_input_len and p.output_len >= spec.min_input_len
    assert check_lengths(tok, prompts) == []
    # the conversation that starts with the assistant still yields its first human turn
    assert any("haiku" in (p.text or p.messages[0]["content"]) for p in build_prompts(
        WorkloadSpec(dataset="sharegpt", dataset_path=str(SHAREGPT), num_prompts=11, chat=chat)))


def test_sharegpt_filters_short_and_long_like_vllm(tok) -> None:
    spec = WorkloadSpec(dataset="sharegpt", dataset_path=str(SHAREGPT), num_prompts=11, seed=2)
    texts = {p.text for p in build_prompts(spec, tok)}
    assert "hi" not in texts and "ok" not in texts  # fewer than 4 tokens
    strict = WorkloadSpec(dataset="sharegpt", dataset_path=str(SHAREGPT), num_prompts=2, max_input_len=15)
    assert all(p.input_len <= 15 for p in build_prompts(strict, tok))
    with pytest.raises(WorkloadError, match=r"only \d+ of 13 conversations .* pass the length filters"):
        build_prompts(WorkloadSpec(dataset="sharegpt", dataset_path=str(SHAREGPT), num_prompts=12), tok)


def test_sharegpt_fixed_output_len_and_seeded_order(tok) -> None:
    base = {"dataset": "sharegpt", "dataset_path": str(SHAREGPT), "num_prompts": 6}
    fixed = build_prompts(WorkloadSpec(**base, output_len=77, output_len_fixed=True, seed=1), tok)
    assert {p.output_len for p in fixed} == {77}
    one = [p.text for p in build_prompts(WorkloadSpec(**base, seed=1), tok)]
    again = [p.text for p in build_prompts(WorkloadSpec(**base, seed=1), tok, use_cache=False)]
    other = [p.text for p in build_prompts(WorkloadSpec(**base, seed=2), tok)]
    assert one == again and one != other


def test_jsonl_prompts_fixture(tok) -> None:
    spec = WorkloadSpec(dataset="jsonl", dataset_path=str(PROMPTS), num_prompts=3, output_len=99)
    prompts = build_prompts(spec, tok)
    assert [p.output_len for p in prompts] == [64, 99, 200]
    assert prompts[0].text.startswith("Write a limerick")
    assert all(p.input_len == len(tok.encode(p.text)) for p in prompts)
    fixed = build_prompts(WorkloadSpec(dataset="jsonl", dataset_path=str(PROMPTS), num_prompts=3,
                                       output_len=5, output_len_fixed=True), tok)
    assert [p.output_len for p in fixed] == [5, 5, 5]


def test_jsonl_messages_fixture_in_a_chat_run(tok) -> None:
    spec = WorkloadSpec(dataset="jsonl", dataset_path=str(MESSAGES), num_prompts=3, chat=True, output_len=10)
    prompts = build_prompts(spec, tok)
    assert [len(p.messages) for p in prompts] == [2, 3, 1]
    assert [p.output_len for p in prompts] == [32, 10, 10]
    assert check_lengths(tok, prompts) == []


def test_jsonl_messages_in_a_completions_run_is_a_clear_error(tok) -> None:
    spec = WorkloadSpec(dataset="jsonl", dataset_path=str(MESSAGES), num_prompts=3)
    with pytest.raises(WorkloadError, match=r"messages.jsonl:1: has 'messages' but the run sends completions"):
        build_prompts(spec, tok)


@pytest.mark.parametrize(
    "line, needle",
    [
        ("{not json", ":2: not valid JSON"),
        ('{"text": "x"}', ":2: needs a non-empty 'prompt'"),
        ('{"prompt": "x", "output_len": 0}', ":2: 'output_len' must be a positive integer"),
        ('[1, 2]', ":2: expected an object"),
    ],
)
def test_jsonl_bad_line_names_the_line(tok, tmp_path: Path, line: str, needle: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(WorkloadError) as err:
        build_prompts(WorkloadSpec(dataset="jsonl", dataset_path=str(path), num_prompts=2), tok)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_jsonl_too_few_lines_says_how_many(tok) -> None:
    with pytest.raises(WorkloadError, match="has 3 prompts but 10 were asked for: use --num-prompts 3"):
        build_prompts(WorkloadSpec(dataset="jsonl", dataset_path=str(PROMPTS), num_prompts=10), tok)


@pytest.mark.parametrize("dataset", ["sharegpt", "jsonl"])
def test_missing_dataset_file(tok, tmp_path: Path, dataset: str) -> None:
    with pytest.raises(WorkloadError, match="not found: pass --dataset-path"):
        build_prompts(WorkloadSpec(dataset=dataset, dataset_path=str(tmp_path / "none")), tok)


def test_not_a_sharegpt_file(tok, tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(WorkloadError, match="expected a JSON list"):
        build_prompts(WorkloadSpec(dataset="sharegpt", dataset_path=str(path)), tok)


def test_dataset_change_invalidates_the_cache(tok, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "first version"}\n', encoding="utf-8")
    spec = WorkloadSpec(dataset="jsonl", dataset_path=str(path), num_prompts=1)
    assert build_prompts(spec, tok)[0].text == "first version"
    path.write_text('{"prompt": "second version, longer"}\n', encoding="utf-8")
    assert build_prompts(spec, tok)[0].text == "second version, longer"


def test_jsonl_from_a_pipe_is_read_once_and_not_cached(tok, tmp_path: Path, private_cache: None) -> None:
    """``--dataset-path <(zcat prompts.jsonl.gz)``: a pipe is a source; it has no identity to cache by."""
    import os
    import threading

    from loadgen import workload

    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes(PROMPTS.read_bytes()), daemon=True)
    feeder.start()
    from_pipe = build_prompts(WorkloadSpec(dataset="jsonl", dataset_path=str(fifo), num_prompts=3, output_len=99), tok)
    feeder.join(timeout=30)
    assert workload.last_build.source == "built" and workload.last_build.cache_file is None
    from_file = build_prompts(WorkloadSpec(dataset="jsonl", dataset_path=str(PROMPTS), num_prompts=3, output_len=99), tok)
    assert [(p.text, p.input_len) for p in from_pipe] == [(p.text, p.input_len) for p in from_file]
