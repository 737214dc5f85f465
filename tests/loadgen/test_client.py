"""The streaming client against real servers on 127.0.0.1.

``tests/servers/stream_server.py`` (exact timing, deterministic faults every Nth request,
a keep-alive-closing mode) is started as a subprocess; the sim (``sim_server`` /
``sim_fast`` from conftest) covers the probabilistic fault flags.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable

import pytest

from loadgen.client import ClientError, LiveCounters, StreamClient, Target, check_stream
from loadgen.control import ControlError, models
from loadgen.records import RequestRecord
from tests.loadgen.conftest import prompt, send_all, server_json

# stream_server(*args): tests/servers/stream_server.py on a free port, yields the port, always stopped afterwards
from tests.servers.stream_server import spawn as stream_server


def ms(ns: int) -> float:
    return ns / 1e6


def test_stream_is_measured_against_known_timing() -> None:
    with stream_server("--ttft-ms", "60", "--itl-ms", "10") as port:
        counters = LiveCounters()
        recs = send_all(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 12) for i in range(4)],
                        counters=counters)
    for r in recs:
        assert r.error is None, r.error_detail
        assert r.status == 200 and r.finish_reason == "length"
        assert len(r.chunk_ns) == 12 and list(r.chunk_tokens) == [1] * 12
        assert r.output_tokens == 12 and r.output_tokens_source == "usage"
        assert r.server_prompt_tokens == 2
        assert 55 <= ms(r.first_ns - r.sent_ns) <= 400
        assert r.first_ns == r.chunk_ns[0] and r.last_ns >= r.chunk_ns[-1]
        gaps = [ms(b - a) for a, b in zip(r.chunk_ns, r.chunk_ns[1:], strict=False)]
        assert 5 <= sorted(gaps)[len(gaps) // 2] <= 60
        assert r.text == ""  # usage was present and texts were not asked for
    assert (counters.started, counters.completed, counters.failed, counters.in_flight) == (4, 4, 0, 0)
    assert counters.output_tokens == 48


@pytest.mark.parametrize("backend,chat", [("openai-chat", True), ("sglang", False), ("openai", False)])
def test_other_protocols_stream(backend: str, chat: bool) -> None:
    with stream_server("--ttft-ms", "5", "--itl-ms", "1") as port:
        recs = send_all(Target(f"http://127.0.0.1:{port}", backend, "m", save_text=True),
                        [prompt(i, 6, chat=chat) for i in range(3)])
    for r in recs:
        assert r.error is None, r.error_detail
        assert len(r.chunk_ns) == 6 and r.output_tokens == 6 and r.output_tokens_source == "usage"
        assert r.text == " t1 t2 t3 t4 t5 t6"


def test_multi_token_chunks_carry_their_token_counts() -> None:
    with stream_server("--ttft-ms", "5", "--itl-ms", "2", "--tokens-per-chunk", "4") as port:
        (r,) = send_all(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(0, 10)])
    assert r.error is None
    assert list(r.chunk_tokens) == [4, 4, 2] and r.output_tokens == 10


def test_without_usage_counts_chunks_and_keeps_text_only_when_asked() -> None:
    with stream_server("--ttft-ms", "5", "--itl-ms", "1", "--no-usage") as port:
        (r,) = send_all(Target(f"http://127.0.0.1:{port}", "openai", "m"), [prompt(0, 5)])
        (kept,) = send_all(Target(f"http://127.0.0.1:{port}", "openai", "m", save_text=True), [prompt(0, 5)])
    assert r.error is None
    assert r.output_tokens == 5 and r.output_tokens_source == "chunks"
    assert r.server_prompt_tokens is None
    assert r.text == "" and r.invisible_tokens == 0  # no text is held per chunk unless --save-text
    assert kept.text == " t1 t2 t3 t4 t5"


def test_server_closing_keep_alive_after_each_response_causes_no_failure() -> None:
    with stream_server("--ttft-ms", "1", "--itl-ms", "0.2", "--close-after-response") as port:
        recs = send_all(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 4) for i in range(60)], limit=4)
        stats = server_json(port, "/stats")
    assert [r.error for r in recs if r.error] == []
    assert stats["requests"] == 60
    assert stats["connections"] >= 60  # really one connection per response
    # stale connections were retried, then the client stopped reusing them
    assert sum(r.retries for r in recs) <= 20


def test_connections_are_reused() -> None:
    with stream_server("--ttft-ms", "1", "--itl-ms", "0.2") as port:
        recs = send_all(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 4) for i in range(40)], limit=4)
        stats = server_json(port, "/stats")
    assert all(r.error is None for r in recs)
    assert stats["connections"] <= 4 + 1  # + the /stats request's own connection
    assert stats["max_in_flight"] <= 4


@pytest.mark.parametrize("kind,error,status", [
    ("429", "http_429", 429),
    ("500", "http_500", 500),
    ("reset-mid", "reset_mid_stream", 200),
    ("malformed", "malformed", 200),
])
def test_injected_faults_are_classified_and_do_not_stop_others(kind: str, error: str, status: int) -> None:
    with stream_server("--ttft-ms", "2", "--itl-ms", "1", "--fail-every", "3", "--fail-kind", kind) as port:
        recs = send_all(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 6) for i in range(9)], limit=1)
    assert [r.error for r in recs] == [None, None, error] * 3
    bad = recs[2]
    assert bad.status == status and bad.error_detail
    if kind == "reset-mid":
        assert len(bad.chunk_ns) >= 1 and bad.first_ns > 0  # partial measurements kept
    if kind == "malformed":
        assert len(bad.chunk_ns) == 5  # the rest of the stream was still measured
    if kind == "429":
        assert "rate limited" in bad.error_detail


def test_reset_before_first_byte_is_retried() -> None:
    with stream_server("--ttft-ms", "2", "--itl-ms", "1", "--fail-every", "2", "--fail-kind", "reset-before") as port:
        recs = send_all(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(i, 3) for i in range(6)], limit=1)
    assert all(r.error is None for r in recs)
    # server request 2, 4, 6, ... is reset: every request after the first meets one reset
    assert [r.retries for r in recs] == [0, 1, 1, 1, 1, 1]


def test_reset_before_first_byte_gives_up_after_retries() -> None:
    with stream_server("--fail-every", "1", "--fail-kind", "reset-before") as port:
        (r,) = send_all(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(0, 3)])
    assert r.error == "reset_before_first_byte" and r.retries == 2


def test_stall_hits_the_timeout_and_keeps_partial_measurements() -> None:
    with stream_server("--ttft-ms", "2", "--itl-ms", "1", "--fail-every", "1", "--fail-kind", "stall",
                       "--stall-ms", "5000") as port:
        (r,) = send_all(Target(f"http://127.0.0.1:{port}", "vllm", "m", timeout_s=0.5), [prompt(0, 6)])
    assert r.error == "timeout"
    assert len(r.chunk_ns) == 1 and r.output_tokens == 1
    assert 400 <= ms(r.last_ns - r.sent_ns) <= 2000 or r.last_ns == r.chunk_ns[-1]


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (r,) = send_all(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(0)])
    assert r.error == "connect" and str(port) in r.error_detail


def test_non_sse_answer_is_named() -> None:
    with stream_server("--content-type", "application/json") as port:
        (r,) = send_all(Target(f"http://127.0.0.1:{port}", "vllm", "m"), [prompt(0, 2)])
        assert r.error == "not_sse" and "application/json" in r.error_detail
        with pytest.raises(ClientError, match="not_sse.*application/json"):
            check_stream(Target(f"http://127.0.0.1:{port}", "vllm", "m"), prompt(0, 2))


def test_probe_and_check_stream() -> None:
    with stream_server("--ttft-ms", "1", "--itl-ms", "1") as port:
        assert [m.id for m in models(f"http://127.0.0.1:{port}")] == ["stream-test"]
        rec = check_stream(Target(f"http://127.0.0.1:{port}/v1", "vllm", "m"), prompt(0, 2))
        assert rec.output_tokens == 2
        with pytest.raises(ClientError, match="http_404"):
            check_stream(Target(f"http://127.0.0.1:{port}", "vllm", "m", endpoint="/nope"), prompt(0, 2))
    with pytest.raises(ControlError, match="cannot reach .* is the server running") as err:
        models(f"http://127.0.0.1:{port}")
    assert err.value.kind == "connect"


def test_bad_base_url_is_one_clear_error() -> None:
    with pytest.raises(ClientError, match="not an http"):
        check_stream(Target("ftp://x", "vllm", "m"), prompt(0))


# --- against the sim -------------------------------------------------------------

def sim_target(srv, backend: str = "vllm", **kw) -> Target:
    return Target(srv.base_url, backend, "deepseek-r1", **kw)


def test_sim_streams_with_real_token_counts(sim_fast) -> None:
    recs = send_all(sim_target(sim_fast), [prompt(i, 16) for i in range(8)])
    for r in recs:
        assert r.error is None, r.error_detail
        assert r.output_tokens == 16 and r.output_tokens_source == "usage"
        assert sum(r.chunk_tokens) == 16 and r.server_prompt_tokens and r.server_prompt_tokens > 0


def test_sim_chat_stream(sim_fast) -> None:
    (r,) = send_all(sim_target(sim_fast, "openai-chat"), [prompt(0, 10, chat=True)])
    assert r.error is None, r.error_detail
    assert r.output_tokens == 10 and sum(r.chunk_tokens) == 10


def test_sim_multi_token_chunks(sim_server: Callable) -> None:
    srv = sim_server("--tokens-per-chunk", "3")
    (r,) = send_all(sim_target(srv), [prompt(0, 12)])
    assert r.error is None, r.error_detail
    # the sim's prefill step yields one token, each decode step three
    assert sum(r.chunk_tokens) == 12 and r.output_tokens == 12
    assert len(r.chunk_ns) < 12 and list(r.chunk_tokens[1:4]) == [3, 3, 3]


def test_sim_faults_are_counted_and_the_rest_completes(sim_server: Callable) -> None:
    srv = sim_server("--fault-429", "0.1", "--fault-500", "0.1", "--fault-reset-mid", "0.1",
                     "--fault-malformed", "0.1", "--fault-reset-before", "0.1", "--fault-seed", "3")
    recs = send_all(sim_target(srv), [prompt(i, 8) for i in range(120)], limit=16)
    kinds = {r.error for r in recs}
    assert {None, "http_429", "http_500", "reset_mid_stream", "malformed"} <= kinds, kinds
    assert kinds <= {None, "http_429", "http_500", "reset_mid_stream", "malformed", "reset_before_first_byte"}
    assert sum(r.retries for r in recs) > 0
    assert sum(1 for r in recs if r.error is None) > 40
    for r in recs:
        if r.error == "reset_mid_stream":
            assert r.status == 200


def test_sim_stall_times_out(sim_server: Callable) -> None:
    srv = sim_server("--fault-stall", "1", "--stall-ms", "3000")
    (r,) = send_all(sim_target(srv, timeout_s=0.8), [prompt(0, 20)])
    assert r.error == "timeout"


def first_chunk_with_busy_loop(port: int, kernel_stamps: bool = True) -> tuple[RequestRecord, bool, int]:
    """Send one request, then block the event loop for 1 s while its first chunk (due after
    50 ms) arrives; return the record, whether kernel stamps were on, and when the loop was free."""
    import time

    async def main() -> tuple[RequestRecord, bool, int]:
        client = StreamClient(Target(f"http://127.0.0.1:{port}", "vllm", "m"), kernel_stamps=kernel_stamps)
        rec = RequestRecord(0, 4, 3)
        task = asyncio.ensure_future(client.request(rec, client.build_body(prompt(0, 3))))
        while not rec.sent_ns:
            await asyncio.sleep(0.001)
        time.sleep(1.0)  # the loop is busy elsewhere when the bytes arrive
        free_ns = time.perf_counter_ns()
        await asyncio.wait_for(task, 10)
        stamped = client.kernel_stamps
        await client.close()
        return rec, stamped, free_ns

    return asyncio.run(main())


@pytest.mark.skipif(sys.platform != "linux", reason="kernel receive stamps are Linux-only")
def test_kernel_stamps_do_not_wait_for_a_busy_loop() -> None:
    """Ordering, not durations: a kernel stamp is taken before the loop could have read the
    bytes; a read-time stamp only after. Holds at any speed while the first chunk (50 ms after the
    request) arrives within the second the loop is blocked."""
    with stream_server("--ttft-ms", "50", "--itl-ms", "5") as port:
        rec, stamped, free_ns = first_chunk_with_busy_loop(port)
        assert stamped and rec.error is None
        assert rec.sent_ns + 45_000_000 <= rec.first_ns < free_ns  # when the chunk arrived, not when it was read
        rec, stamped, free_ns = first_chunk_with_busy_loop(port, kernel_stamps=False)
        assert not stamped and rec.error is None
        assert rec.first_ns >= free_ns  # read-time stamps include the loop's delay
