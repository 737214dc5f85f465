"""The comparison reader: the same measurement done through aiohttp's response API.

It shares everything with loadgen's client except the HTTP layer -- same SSE framer,
same protocol parser, same records, same concurrency gate -- so that the difference
perf/client.py reports is the cost of aiohttp's streaming machinery alone (the
decision recorded in docs/client.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from time import perf_counter_ns

import aiohttp

from loadgen.client import Endpoint, Target
from loadgen.lag import LagMonitor
from loadgen.protocols import get_protocol
from loadgen.records import Prompt, RequestRecord
from loadgen.sse import SSEFramer


async def run_aiohttp(target: Target, prompts: Sequence[Prompt], concurrency: int
                      ) -> tuple[list[RequestRecord], int, int, list[int]]:
    """Send every prompt at once through a gate of ``concurrency``; return
    (records, start_ns, end_ns, lag_samples_ns)."""
    proto = get_protocol(target.backend)
    ep = Endpoint.parse(target.base_url, target.endpoint or proto.default_endpoint)
    url = f"http://{ep.host_header}{ep.path}"
    bodies = [proto.build_body(p, target.model, ignore_eos=target.ignore_eos, extra_body=target.extra_body)
              for p in prompts]
    gate = asyncio.Semaphore(concurrency)
    records: list[RequestRecord] = []
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def one(prompt: Prompt, body: bytes, intended: int) -> None:
            rec = RequestRecord(prompt.id, prompt.input_len, prompt.output_len, intended_ns=intended)
            records.append(rec)
            framer = SSEFramer()
            state = proto.new_state()
            parse = proto.parse
            counted = 0
            last_ct = None
            async with gate:
                try:
                    rec.sent_ns = perf_counter_ns()
                    async with session.post(url, data=body) as resp:
                        rec.status = resp.status
                        if resp.status != 200:
                            rec.error = f"http_{resp.status}"
                            await resp.read()
                            return
                        async for data in resp.content.iter_any():
                            t = perf_counter_ns()
                            rec.last_ns = t
                            for payload in framer.feed(data):
                                if payload == b"[DONE]":
                                    continue
                                content, ct, pt, fin, _text, _err, _cached = parse(payload, state)
                                if content:
                                    k = 1 if ct is None else ct - counted
                                    counted = counted + 1 if ct is None else ct
                                    if not rec.chunk_ns:
                                        rec.first_ns = t
                                    rec.chunk_ns.append(t)
                                    rec.chunk_tokens.append(k)
                                if ct is not None:
                                    last_ct = ct
                                if pt is not None:
                                    rec.server_prompt_tokens = pt
                except (TimeoutError, aiohttp.ClientError) as exc:
                    rec.error = type(exc).__name__
            rec.output_tokens = last_ct if last_ct is not None else len(rec.chunk_ns)
            rec.output_tokens_source = "usage" if last_ct is not None else "chunks"

        lag = LagMonitor()
        start = perf_counter_ns()
        lag.start()
        await asyncio.gather(*(one(p, b, start) for p, b in zip(prompts, bodies, strict=True)))
        end = perf_counter_ns()
        lag.stop()
    return records, start, end, lag.samples_ns
