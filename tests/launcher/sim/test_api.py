"""The sim over real sockets: the OpenAI SDK, curl-like raw streams, error bodies."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest


def post(base_url: str, path: str, body: object, timeout: float = 30) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base_url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get(base_url: str, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(base_url + path, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sdk_client(base_url: str):
    """The OpenAI SDK's client (imported here: the SDK costs ~1 s to import in every test process)."""
    import openai

    return openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)


def sse_events(raw: bytes) -> list[str]:
    text = raw.decode()
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text.strip().split("\n\n")]


def test_openai_sdk_streams_chat_with_usage(sim_fast):
    client = sdk_client(sim_fast.base_url)
    stream = client.chat.completions.create(
        model="deepseek-r1", messages=[{"role": "user", "content": "Tell me about batching."}],
        max_tokens=20, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 20
    assert content[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens > 0


def test_openai_sdk_streams_completions_with_usage(sim_fast):
    client = sdk_client(sim_fast.base_url)
    stream = client.completions.create(
        model="deepseek-r1", prompt="The quick brown fox", max_tokens=12, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) == 12 and all(texts)
    assert chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == 4


def test_openai_sdk_non_streaming(sim_fast):
    client = sdk_client(sim_fast.base_url)
    out = client.chat.completions.create(
        model="deepseek-r1", messages=[{"role": "user", "content": "hi"}], max_tokens=7,
        extra_body={"ignore_eos": True},
    )
    assert out.usage.completion_tokens == 7
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].message.content.strip()
    models = client.models.list()
    assert [mdl.id for mdl in models.data] == ["deepseek-r1"]


def test_raw_chat_stream_shape(sim_fast):
    status, raw = post(sim_fast.base_url, "/v1/chat/completions", {
        "model": "deepseek-r1", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    })
    assert status == 200
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [p["choices"][0]["finish_reason"] for p in parsed[1:4]] == [None, None, "length"]
    assert parsed[4]["choices"] == [] and parsed[4]["usage"]["completion_tokens"] == 3


def test_continuous_usage_and_tokens_per_chunk(sim_server):
    srv = sim_server("--tokens-per-chunk", "4")
    status, raw = post(srv.base_url, "/v1/completions", {
        "prompt": "hello", "max_tokens": 10, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    })
    assert status == 200
    parsed = [json.loads(e) for e in sse_events(raw)[:-1]]
    content = [p for p in parsed if p["choices"]]
    assert [p["usage"]["completion_tokens"] for p in content] == [1, 5, 9, 10]
    assert content[-1]["choices"][0]["finish_reason"] == "length"


def test_sglang_generate_stream_is_cumulative(sim_fast):
    status, raw = post(sim_fast.base_url, "/generate", {
        "text": "Once upon a time", "sampling_params": {"max_new_tokens": 5, "ignore_eos": True}, "stream": True,
    })
    assert status == 200
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    texts = [p["text"] for p in parsed]
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))
    last = parsed[-1]["meta_info"]
    assert last["completion_tokens"] == 5 and last["prompt_tokens"] == 4
    assert last["finish_reason"] == {"type": "length", "length": 5}


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/completions", b"{not json", 400),
        ("/v1/completions", {"max_tokens": 5}, 400),
        ("/v1/chat/completions", {"messages": []}, 400),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 100000}, 400),
        ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404),
        ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, 400),
        ("/generate", {"sampling_params": {}}, 400),
        ("/v1/completions", {"prompt": [1, 2, 999999999]}, 400),
        ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, 400),
        ("/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, 400),
    ],
)
def test_bad_requests_get_openai_error_bodies(sim_fast, path, body, status):
    got, raw = post(sim_fast.base_url, path, body)
    assert got == status
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status and err["message"]
    # the server is still fine afterwards
    assert get(sim_fast.base_url, "/health")[0] == 200


def test_control_routes(sim_fast):
    assert get(sim_fast.base_url, "/health") == (200, b"")
    status, raw = get(sim_fast.base_url, "/version")
    assert status == 200 and json.loads(raw)["engine"] == "sim"
    status, raw = get(sim_fast.base_url, "/v1/models")
    assert json.loads(raw)["data"][0]["max_model_len"] == 8192
    status, raw = post(sim_fast.base_url, "/tokenize", {"prompt": "hello world"})
    assert status == 200 and json.loads(raw)["count"] == 2
    assert get(sim_fast.base_url, "/nope")[0] == 404


def test_client_disconnect_frees_the_slot(sim_server, tmp_path):
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"base_ms": 5.0, "decode_seq_ms": 0.0, "prefill_token_ms": 0.0}))
    srv = sim_server("--profile", str(slow))
    import socket

    body = json.dumps({"prompt": "hi", "max_tokens": 4000, "ignore_eos": True, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
        got = b""
        while got.count(b"data: ") < 3:
            got += sock.recv(65536)
        stats = json.loads(get(srv.base_url, "/sim/stats")[1])
        assert stats["running"] == 1
    # 4000 tokens would take 20 s; after the disconnect the slot is freed at once
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if json.loads(get(srv.base_url, "/sim/stats")[1])["running"] == 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the disconnected stream kept its slot")
    assert get(srv.base_url, "/health")[0] == 200
    assert "Traceback" not in srv.log()
