"""Fault injection seen from a real client, /metrics as Prometheus text, start-up delay."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from launcher.sim.faults import FaultConfig, plan_faults


def _within(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sigmas * sd + 1


def test_plan_faults_rates_are_the_configured_ones():
    import random

    cfg = FaultConfig(p_429=0.1, p_500=0.05, p_reset_before=0.05, p_reset_mid=0.2, p_stall=0.1, p_malformed=0.1)
    rng = random.Random(1)
    plans = [plan_faults(cfg, rng, 100) for _ in range(20000)]
    n = len(plans)
    assert _within(sum(p.status == 429 for p in plans), n, 0.1)
    assert _within(sum(p.status == 500 for p in plans), n, 0.05)
    assert _within(sum(p.reset_before for p in plans), n, 0.05)
    # mid-stream faults are drawn for the 80% that got past the first draw
    assert _within(sum(bool(p.reset_after) for p in plans), n, 0.8 * 0.2)
    assert all(1 <= p.reset_after <= 99 for p in plans if p.reset_after)


async def _one(session, url, body):
    """-> (kind, n_content_chunks, max_gap_s)"""
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                await resp.read()
                return f"http_{resp.status}", 0, 0.0
            chunks, last, gap, malformed = 0, time.monotonic(), 0.0, False
            buf = b""
            async for data in resp.content.iter_any():
                now = time.monotonic()
                buf += data
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    payload = event[6:]
                    if payload == b"[DONE]":
                        continue
                    try:
                        json.loads(payload)
                    except ValueError:
                        malformed = True
                    chunks += 1
                    gap = max(gap, now - last)
                    last = now
            return ("malformed" if malformed else "ok"), chunks, gap
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        return ("reset_mid" if "payload" in type(exc).__name__.lower() or "Payload" in str(type(exc)) else "reset"), 0, 0.0


def test_faults_at_configured_rates_over_http(sim_server):
    srv = sim_server("--fault-429", "0.15", "--fault-500", "0.1", "--fault-reset-before", "0.1",
                     "--fault-reset-mid", "0.15", "--fault-stall", "0.1", "--stall-ms", "150",
                     "--fault-malformed", "0.15", "--fault-seed", "11")
    n = 300

    async def run():
        conn = aiohttp.TCPConnector(limit=50)
        async with aiohttp.ClientSession(connector=conn) as s:
            body = {"prompt": "hi", "max_tokens": 12, "ignore_eos": True, "stream": True}
            return await asyncio.gather(*[_one(s, srv.base_url + "/v1/completions", body) for _ in range(n)])

    results = asyncio.run(run())
    kinds = [k for k, _, _ in results]
    assert _within(kinds.count("http_429"), n, 0.15)
    assert _within(kinds.count("http_500"), n, 0.10)
    resets = sum(k in ("reset", "reset_mid") for k in kinds)
    # before-first-byte resets (10%) plus mid-stream resets (15% of the remaining 65%)
    assert _within(resets, n, 0.10 + 0.65 * 0.15, sigmas=5)
    assert kinds.count("malformed") > 0
    stalled = [g for k, _, g in results if k == "ok" and g >= 0.14]
    assert stalled, "no stream stalled"
    with urllib.request.urlopen(srv.base_url + "/sim/stats", timeout=10) as resp:
        stats = json.loads(resp.read())
    injected = stats["faults_injected"]
    assert injected.get("429", 0) == kinds.count("http_429")
    assert injected.get("500", 0) == kinds.count("http_500")
    assert "Traceback" not in srv.log()
    # the server survived all of it
    with urllib.request.urlopen(srv.base_url + "/health", timeout=10) as resp:
        assert resp.status == 200


def test_metrics_parse_as_prometheus_text(sim_fast):
    async def load():
        async with aiohttp.ClientSession() as s:
            body = {"prompt": "hello", "max_tokens": 5, "ignore_eos": True, "stream": True}
            await asyncio.gather(*[_one(s, sim_fast.base_url + "/v1/completions", body) for _ in range(10)])

    asyncio.run(load())
    with urllib.request.urlopen(sim_fast.base_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:time_to_first_token_seconds",
                 "vllm:inter_token_latency_seconds", "vllm:e2e_request_latency_seconds",
                 "vllm:request_queue_time_seconds", "sim:step_lateness_seconds"):
        assert name in families, name
    ttft = {s.name: s.value for s in families["vllm:time_to_first_token_seconds"].samples}
    assert ttft["vllm:time_to_first_token_seconds_count"] >= 10
    gen = [s.value for s in families["vllm:generation_tokens"].samples if s.name.endswith("_total")]
    assert gen[0] >= 50
    assert families["vllm:num_requests_running"].samples[0].labels == {"model_name": "deepseek-r1"}


def test_startup_delay_answers_503_then_200(sim_server):
    srv = sim_server("--startup-delay", "1.5", expect_status=503)
    req = urllib.request.Request(srv.base_url + "/v1/completions", data=b'{"prompt":"x"}',
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("request accepted during start-up")
    except urllib.error.HTTPError as exc:
        assert exc.code == 503
        assert json.loads(exc.read())["error"]["code"] == 503
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(srv.base_url + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError:
            time.sleep(0.1)
    raise AssertionError("/health never turned 200")
