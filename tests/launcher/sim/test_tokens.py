"""Prompt-token counts from the sim equal the real tokenizer's (transformers), and
output lengths are exact with ignore_eos."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from launcher.sim.tokens import SimTokenizer

RAW_PROMPTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.\n\nSecond paragraph,  with  double spaces.",
    "混合 English 和中文 text — with dashes, émojis 🚀 and numbers 12345.",
    "def f(x):\n    return x ** 2  # code\n",
    " leading space and trailing newline\n",
    ("A long prompt about continuous batching and KV caches. " * 120),  # > 4000 chars: worker-thread path
]

CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain paged attention."}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>easy</think>4"},
        {"role": "user", "content": "And 3+3? 请回答"},
    ],
    [{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}],
]


# ``hf`` (transformers' own tokenizer, the reference) comes from conftest.py.


def _hf_chat_len(hf, messages):
    flat = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            content = "\n".join(p["text"] for p in content)
        flat.append({**msg, "content": content})
    return len(hf.apply_chat_template(flat, tokenize=True, add_generation_prompt=True, return_dict=False))


def test_sim_tokenizer_matches_transformers(hf):
    tok = SimTokenizer("deepseek-r1")
    for text in RAW_PROMPTS:
        assert tok.encode(text) == hf.encode(text)
    for messages in CHATS:
        flat = [{**m, "content": m["content"] if isinstance(m["content"], str) else "\n".join(
            p["text"] for p in m["content"])} for m in messages]
        assert tok.chat_ids(flat) == hf.apply_chat_template(
            flat, tokenize=True, add_generation_prompt=True, return_dict=False)


def test_output_pieces_retokenize_to_the_same_count():
    tok = SimTokenizer("deepseek-r1")
    text = "".join(tok.pieces[(i * 7919) % len(tok.pieces)] for i in range(300))
    assert len(tok.encode(text, add_special_tokens=False)) == 300


async def _post(session, url, body):
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.read()


def test_server_prompt_tokens_equal_tokenizer(sim_fast, hf):
    async def run():
        async with aiohttp.ClientSession() as s:
            raw = await asyncio.gather(*[
                _post(s, sim_fast.base_url + "/v1/completions", {"prompt": p, "max_tokens": 1}) for p in RAW_PROMPTS
            ])
            chat = await asyncio.gather(*[
                _post(s, sim_fast.base_url + "/v1/chat/completions", {"messages": m, "max_tokens": 1}) for m in CHATS
            ])
            ids = await _post(s, sim_fast.base_url + "/v1/completions", {"prompt": [5, 6, 7, 8, 9], "max_tokens": 1})
            return raw, chat, ids

    raw, chat, ids = asyncio.run(run())
    for prompt, (status, body) in zip(RAW_PROMPTS, raw, strict=True):
        assert status == 200
        assert json.loads(body)["usage"]["prompt_tokens"] == len(hf.encode(prompt))
    for messages, (status, body) in zip(CHATS, chat, strict=True):
        assert status == 200
        assert json.loads(body)["usage"]["prompt_tokens"] == _hf_chat_len(hf, messages)
    assert json.loads(ids[1])["usage"]["prompt_tokens"] == 5


def test_ignore_eos_lengths_exact_and_early_stop_without(sim_fast):
    lengths = [1, 2, 17, 64, 200, 333]

    async def run(ignore_eos):
        async with aiohttp.ClientSession() as s:
            out = []
            for n in lengths:
                body = {"prompt": "Count: ", "max_tokens": n, "ignore_eos": ignore_eos, "stream": True,
                        "stream_options": {"include_usage": True}}
                async with s.post(sim_fast.base_url + "/v1/completions", json=body) as resp:
                    events = (await resp.read()).decode().strip().split("\n\n")
                content = [json.loads(e[6:]) for e in events[:-1]]
                out.append((sum(1 for c in content if c["choices"]), content[-1]["usage"]["completion_tokens"],
                            content[-2]["choices"][0]["finish_reason"]))
            return out

    exact = asyncio.run(run(True))
    assert [chunks for chunks, _, _ in exact] == lengths
    assert [usage for _, usage, _ in exact] == lengths
    assert all(reason == "length" for _, _, reason in exact)

    # Without ignore_eos some outputs stop early (natural length), reported as "stop",
    # and usage still counts exactly what was sent.
    async def many():
        async with aiohttp.ClientSession() as s:
            res = await asyncio.gather(*[
                _post(s, sim_fast.base_url + "/v1/completions", {"prompt": "x", "max_tokens": 2000}) for _ in range(40)
            ])
        return [json.loads(b) for _, b in res]

    bodies = asyncio.run(many())
    stopped = [b for b in bodies if b["choices"][0]["finish_reason"] == "stop"]
    assert stopped, "no request stopped early with ignore_eos off"
    for b in bodies:
        assert b["usage"]["completion_tokens"] <= 2000
