"""Wire protocols: request bodies built from Prompt records, SSE events parsed."""

from __future__ import annotations

import orjson
import pytest

from loadgen.protocols import BACKENDS, get_protocol
from loadgen.protocols.base import ANSWER, REASONING, UNRECOGNISED
from loadgen.records import Prompt

TEXT = Prompt(id=1, input_len=5, output_len=64, text="hello there")
CHAT = Prompt(id=2, input_len=9, output_len=32, messages=[{"role": "user", "content": "hi"}])


def body(backend: str, prompt: Prompt, **kw) -> dict:
    return orjson.loads(get_protocol(backend).build_body(prompt, "m", **kw))


def test_registry_names_and_unknown_backend() -> None:
    assert set(BACKENDS) == {"openai", "vllm", "openai-chat", "sglang"}
    with pytest.raises(ValueError, match="unknown backend 'tgi'.*openai, vllm, openai-chat, sglang"):
        get_protocol("tgi")


def test_default_endpoints() -> None:
    assert get_protocol("openai").default_endpoint == "/v1/completions"
    assert get_protocol("vllm").default_endpoint == "/v1/completions"
    assert get_protocol("openai-chat").default_endpoint == "/v1/chat/completions"
    assert get_protocol("sglang").default_endpoint == "/generate"


def test_openai_completions_body_asks_for_usage_only() -> None:
    b = body("openai", TEXT)
    assert b["stream"] is True and b["prompt"] == "hello there" and b["max_tokens"] == 64
    assert b["stream_options"] == {"include_usage": True}
    assert b["ignore_eos"] is True and b["model"] == "m"


def test_vllm_body_asks_for_continuous_usage() -> None:
    assert body("vllm", TEXT)["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


def test_ignore_eos_off_is_not_sent() -> None:
    assert "ignore_eos" not in body("vllm", TEXT, ignore_eos=False)
    assert "ignore_eos" not in body("sglang", TEXT, ignore_eos=False)["sampling_params"]


def test_extra_body_merges_last_recursively_and_null_removes() -> None:
    b = body("vllm", TEXT, extra_body={"temperature": 0.7, "stream_options": {"continuous_usage_stats": None},
                                       "top_k": 5, "stream": True})
    assert b["temperature"] == 0.7 and b["top_k"] == 5
    assert b["stream_options"] == {"include_usage": True}


def test_chat_body_and_wrong_prompt_kinds() -> None:
    b = body("openai-chat", CHAT)
    assert b["messages"] == CHAT.messages and b["stream"] is True
    assert b["stream_options"]["include_usage"] is True
    with pytest.raises(ValueError, match="raw text but backend 'openai-chat'"):
        get_protocol("openai-chat").build_body(TEXT, "m")
    with pytest.raises(ValueError, match="chat messages but backend 'vllm'"):
        get_protocol("vllm").build_body(CHAT, "m")


def test_sglang_body() -> None:
    b = body("sglang", TEXT)
    assert b["text"] == "hello there" and b["stream"] is True
    assert b["sampling_params"] == {"max_new_tokens": 64, "temperature": 0.0, "ignore_eos": True}


def test_completions_events() -> None:
    p = get_protocol("vllm")
    ev = p.parse(b'{"choices":[{"text":" a","finish_reason":null}],'
                 b'"usage":{"prompt_tokens":5,"completion_tokens":3}}', None)
    assert ev == (True, 3, 5, None, " a", None, None)
    # empty text is not content; the usage-only final chunk carries counts only
    assert p.parse(b'{"choices":[{"text":"","finish_reason":"length"}]}', None)[:4] == (False, None, None, "length")
    assert p.parse(b'{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":64}}', None)[:3] == (False, 64, 5)
    err = p.parse(b'{"error":{"message":"boom","code":500}}', None)
    assert err[0] is False and err[5] == "boom"
    assert p.parse(b'{"object":"error","message":"bad"}', None)[5] == "bad"


def test_chat_events_role_delta_is_not_content_reasoning_is() -> None:
    p = get_protocol("openai-chat")
    st = p.new_state()
    assert p.parse(b'{"choices":[{"delta":{"role":"assistant","content":""}}]}', st)[0] is False
    assert p.parse(b'{"choices":[{"delta":{"reasoning_content":"hmm"}}]}', st)[:5] == (REASONING, None, None, None, "hmm")
    # newer vLLM names the field `reasoning`; a null content beside it is no answer
    assert p.parse(b'{"choices":[{"delta":{"content":null,"reasoning":"so"}}]}', st)[:5] == (REASONING, None, None, None,
                                                                                               "so")
    ev = p.parse(b'{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}],'
                 b'"usage":{"prompt_tokens":9,"completion_tokens":2}}', st)
    assert ev == (ANSWER, 2, 9, "stop", "x", None, None)
    assert p.reasoning_report(st) == (None, None)


def test_chat_reasoning_tokens_from_final_usage() -> None:
    p = get_protocol("openai-chat")
    st = p.new_state()
    p.parse(b'{"choices":[{"delta":{"reasoning_content":"a"}}]}', st)
    p.parse(b'{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":7,'
            b'"completion_tokens_details":{"reasoning_tokens":5}}}', st)
    assert p.reasoning_report(st) == (5, None)
    # the same count on the chunk that carries the finish reason
    st = p.new_state()
    p.parse(b'{"choices":[{"delta":{"content":"b"},"finish_reason":"length"}],"usage":{"prompt_tokens":9,'
            b'"completion_tokens":7,"completion_tokens_details":{"reasoning_tokens":4}}}', st)
    assert p.reasoning_report(st) == (4, None)
    # SGLang's spelling, at the top of usage
    st = p.new_state()
    p.parse(b'{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":7,"reasoning_tokens":6}}', st)
    assert p.reasoning_report(st) == (6, None)


def test_chat_text_under_an_unknown_field_is_output_and_named() -> None:
    p = get_protocol("openai-chat")
    st = p.new_state()
    assert p.parse(b'{"choices":[{"delta":{"role":"assistant","content":""}}]}', st)[0] is False
    assert p.parse(b'{"choices":[{"delta":{"thinking":"hm"}}]}', st)[:5] == (UNRECOGNISED, None, None, None, "hm")
    assert p.parse(b'{"choices":[{"delta":{"thinking":"m"}}]}', st)[0] == UNRECOGNISED
    assert p.parse(b'{"choices":[{"delta":{"content":"ok"}}]}', st)[0] == ANSWER
    assert p.reasoning_report(st) == (None, "thinking")
    # non-text fields (tool calls) and known ones name nothing
    st = p.new_state()
    p.parse(b'{"choices":[{"delta":{"tool_calls":[{"index":0}],"refusal":""}}]}', st)
    assert p.reasoning_report(st) == (None, None)


def test_sglang_events_are_cumulative() -> None:
    p = get_protocol("sglang")
    st = p.new_state()
    e1 = p.parse(b'{"text":"ab","meta_info":{"prompt_tokens":4,"completion_tokens":1,"finish_reason":null}}', st)
    e2 = p.parse(b'{"text":"abcd","meta_info":{"prompt_tokens":4,"completion_tokens":3,"finish_reason":null}}', st)
    e3 = p.parse(b'{"text":"abcd","meta_info":{"prompt_tokens":4,"completion_tokens":3,'
                 b'"finish_reason":{"type":"length","length":3}}}', st)
    assert e1 == (True, 1, 4, None, "ab", None, None)
    assert e2 == (True, 3, 4, None, "cd", None, None)
    assert e3[0] is False and e3[3] == "length"


@pytest.mark.parametrize("backend", ["openai", "vllm", "openai-chat"])
def test_cached_tokens_come_from_the_final_usage_and_absent_is_none(backend: str) -> None:
    p = get_protocol(backend)
    final = p.parse(b'{"choices":[],"usage":{"prompt_tokens":80,"completion_tokens":4,'
                    b'"prompt_tokens_details":{"cached_tokens":64}}}', None)
    assert final[:3] == (False, 4, 80) and final[6] == 64
    zero = p.parse(b'{"choices":[],"usage":{"prompt_tokens":80,"completion_tokens":4,'
                   b'"prompt_tokens_details":{"cached_tokens":0}}}', None)
    assert zero[6] == 0  # reported zero stays zero
    for unreported in (b'{"choices":[],"usage":{"prompt_tokens":80,"completion_tokens":4}}',
                       b'{"choices":[],"usage":{"prompt_tokens":80,"completion_tokens":4,"prompt_tokens_details":null}}',
                       b'{"choices":[],"usage":{"prompt_tokens":80,"prompt_tokens_details":{"cached_tokens":"x"}}}'):
        assert p.parse(unreported, None)[6] is None


def test_sglang_cached_tokens_read_from_the_last_event_only() -> None:
    p = get_protocol("sglang")
    st = p.new_state()
    mid = p.parse(b'{"text":"ab","meta_info":{"prompt_tokens":40,"completion_tokens":1,"finish_reason":null,'
                  b'"cached_tokens":32}}', st)
    end = p.parse(b'{"text":"abcd","meta_info":{"prompt_tokens":40,"completion_tokens":2,"cached_tokens":32,'
                  b'"finish_reason":{"type":"length","length":2}}}', st)
    assert mid[6] is None and end[6] == 32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b'"text"'])
def test_malformed_events_raise(backend: str, data: bytes) -> None:
    p = get_protocol(backend)
    with pytest.raises((ValueError, AttributeError)):
        p.parse(data, p.new_state())
