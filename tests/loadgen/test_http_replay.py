"""The HTTP/1.1 response reader replayed without sockets, split at every byte.

Each case is a response written out here byte for byte (vLLM-shaped SSE over chunked
encoding, content-length, read-until-close, interim 1xx responses, chunk extensions,
trailers, error bodies, broken framing). It is fed to a real
:class:`~loadgen.client.http1.StreamConn` through its transport seam -- ``received(data,
t)`` and ``connection_lost`` -- with a minimal transport that only records what the
connection does to it, cut into reads every way a socket could deliver it: whole, one
byte per read, two reads at every byte boundary, one read per HTTP chunk (the fast
path's shape) and a few seeded random multi-splits. However the bytes are cut, the
record must come out the same (chunks, tokens, usage, finish reason, error kind) and
the connection must end the same way (back in the pool, or closed).

Each read is stamped with the offset of its last byte, so a chunk's stamp says which
read completed its event: it must be the read holding the event's final ``\\n``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from loadgen.client import StreamClient, Target
from loadgen.client.http1 import MAX_HEADER_BYTES, RETRY, StreamConn
from loadgen.records import RequestRecord

BASE_NS = 1_000_000_000  # read i is stamped BASE_NS + the offset just past its last byte
OK_SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"


# -- recorded responses --------------------------------------------------------------


def vllm_event(text: str | None, completion_tokens: int, finish: str | None = None) -> bytes:
    """One vLLM ``/v1/completions`` stream event with ``continuous_usage_stats``
    (``text=None``: the final usage-only event, ``choices: []``)."""
    usage = {"prompt_tokens": 4, "total_tokens": 4 + completion_tokens, "completion_tokens": completion_tokens}
    choices = [] if text is None else [
        {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}]
    obj = {"id": "cmpl-5c0e2b1f9a", "object": "text_completion", "created": 1764583200,
           "model": "m", "choices": choices, "usage": usage}
    return json.dumps(obj, separators=(",", ":")).encode()


# " The"(1) " quick"(2) ""(3: a token that decodes to nothing yet) " brown fox"(5: two
# tokens in one chunk) " jumps"(6, length), then the usage-only event and [DONE].
VLLM_EVENTS = [
    vllm_event(" The", 1), vllm_event(" quick", 2), vllm_event("", 3),
    vllm_event(" brown fox", 5), vllm_event(" jumps", 6, "length"), vllm_event(None, 6), b"[DONE]",
]
VLLM_CONTENT = [0, 1, 2, 3, 4]  # the events that are chunks


@dataclass(frozen=True)
class Expected:
    """The record a case must produce, worked out by hand from its bytes."""

    status: int = 200
    error: str | None = None
    detail: str = ""  # a prefix of error_detail
    chunk_tokens: tuple[int, ...] = (1, 1, 1, 2, 1)
    output_tokens: int = 6
    source: str = "usage"
    prompt_tokens: int | None = 4
    finish: str | None = "length"
    invisible: int = 1
    text: str = " The quick brown fox jumps"  # everything generated (reasoning first)
    answer: str | None = None  # the answer's text alone, where some of the output was not answer
    kept: bool = True  # the connection goes back to the pool
    reasoning: int = 0  # tokens of reasoning chunks
    answer_chunk: int = 0  # index of the first answer chunk (its stamp is the record's answer_ns)
    unrecognised: tuple[str | None, int] = (None, 0)  # an unknown text field's name, and its tokens
    usage_reasoning: int | None = None  # usage.completion_tokens_details.reasoning_tokens


VLLM_OK = Expected()
NO_OUTPUT = Expected(chunk_tokens=(), output_tokens=0, source="chunks", prompt_tokens=None, finish=None,
                     invisible=0, text="")


def failed(**kw: object) -> Expected:
    """A response that produced no output: what it must say instead."""
    return dataclasses.replace(NO_OUTPUT, **kw)  # type: ignore[arg-type]


@dataclass
class Recording:
    """A response on the wire, and where in it things happen."""

    wire: bytes
    chunk_ends: list[int]  # offset of the byte that completes each chunk-producing event
    reads: list[int] = field(default_factory=list)  # one read per HTTP chunk: the fast path's shape
    closes: bool = False  # the server closes the connection after the last byte
    last_byte: int | None = -1  # the byte after which the record is final (-1: the last one; None: varies)


def sse_body(events: list[bytes], content: list[int]) -> tuple[bytes, list[int]]:
    """``data:`` events in a row, and the offset of the final ``\\n`` of each content event."""
    body, ends = b"", []
    for i, data in enumerate(events):
        body += b"data: " + data + b"\n\n"
        if i in content:
            ends.append(len(body) - 1)
    return body, ends


def chunked(head: bytes, body: bytes, ends: list[int], sizes: list[int] | None = None, *,
            ext: bytes = b"", trailer: bytes = b"", events: list[bytes] | None = None) -> Recording:
    """``body`` in chunked transfer-encoding after ``head``: one chunk per event when
    ``events`` is given (how vLLM writes), else in chunks of the given sizes."""
    wire = head + b"transfer-encoding: chunked\r\n\r\n"
    where: list[int] = []  # wire offset of each body byte
    reads: list[int] = []
    if events is not None:
        sizes = [len(b"data: " + e + b"\n\n") for e in events]
    pos = 0
    for n in sizes or []:
        piece = body[pos : pos + n]
        reads.append(len(wire))
        wire += b"%x%s\r\n" % (len(piece), ext)
        where.extend(range(len(wire), len(wire) + len(piece)))
        wire += piece + b"\r\n"
        pos += len(piece)
    assert pos == len(body)
    reads.append(len(wire))
    wire += b"0" + ext + b"\r\n" + trailer + b"\r\n"
    return Recording(wire, [where[e] for e in ends], reads[1:])


def plain(head: bytes, body: bytes, ends: list[int], *, length: bool) -> Recording:
    """``body`` after ``head`` with a Content-Length, or delimited by the server's close."""
    head += b"content-length: %d\r\n\r\n" % len(body) if length else b"\r\n"
    return Recording(head + body, [len(head) + e for e in ends], closes=not length)


VLLM_BODY, VLLM_ENDS = sse_body(VLLM_EVENTS, VLLM_CONTENT)


def vllm_chunked(head: bytes = OK_SSE, **kw: bytes) -> Recording:
    return chunked(head, VLLM_BODY, VLLM_ENDS, events=VLLM_EVENTS, **kw)


def error_case(head: bytes, body: bytes) -> Recording:
    return Recording(head + b"content-length: %d\r\n\r\n" % len(body) + body, [])


def cut_off(rec: Recording, at: int) -> Recording:
    """The first ``at`` bytes of a response, then the server closes the connection."""
    return Recording(rec.wire[:at], [e for e in rec.chunk_ends if e < at], closes=True)


def json_error(status: int, reason: str, message: str) -> tuple[bytes, bytes]:
    body = json.dumps({"object": "error", "message": message, "type": "BadRequestError", "param": None,
                       "code": status}, separators=(",", ":")).encode()
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n" % (status, reason.encode()), body


HTTP_400 = json_error(400, "Bad Request", "The model `gpt-4` does not exist.")
HTTP_429 = json_error(429, "Too Many Requests", "rate limited")
CHAT_EVENTS = [
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764583200,"model":"m","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],'
    b'"usage":{"prompt_tokens":9,"total_tokens":9,"completion_tokens":0}}',
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764583200,"model":"m","choices":[{"index":0,'
    b'"delta":{"reasoning_content":"Hm."},"logprobs":null,"finish_reason":null}],'
    b'"usage":{"prompt_tokens":9,"total_tokens":11,"completion_tokens":2}}',
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764583200,"model":"m","choices":[{"index":0,'
    b'"delta":{"content":" Hello"},"logprobs":null,"finish_reason":"stop","stop_reason":null}],'
    b'"usage":{"prompt_tokens":9,"total_tokens":12,"completion_tokens":3}}',
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1764583200,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":9,"total_tokens":12,"completion_tokens":3}}',
    b"[DONE]",
]
CHAT_BODY, CHAT_ENDS = sse_body(CHAT_EVENTS, [1, 2])
# The same stream with its thinking under a field no parser knows, and the server's count of it.
THINKING_EVENTS = [e.replace(b'"reasoning_content"', b'"thinking"') for e in CHAT_EVENTS]
THINKING_EVENTS[3] = THINKING_EVENTS[3].replace(
    b'"completion_tokens":3}', b'"completion_tokens":3,"completion_tokens_details":{"reasoning_tokens":2}}')
THINKING_BODY, THINKING_ENDS = sse_body(THINKING_EVENTS, [1, 2])
# Two events per chunk and events across chunk boundaries: a server that coalesces writes.
COALESCED = chunked(OK_SSE, VLLM_BODY, VLLM_ENDS, [1, 300, 577, 9, len(VLLM_BODY) - 887])
# A stream with an event that is not JSON, and one with an error object sent inside it.
BAD_EVENTS = [vllm_event(" The", 1), b"{not json", vllm_event(" quick", 2, "length"), vllm_event(None, 2)]
BAD_BODY, BAD_ENDS = sse_body(BAD_EVENTS, [0, 2])
ERR_EVENTS = [vllm_event(" The", 1),
              b'{"object":"error","message":"KV cache exhausted","type":"InternalServerError","code":500}',
              b"[DONE]"]
ERR_BODY, ERR_ENDS = sse_body(ERR_EVENTS, [0])
BIG_HEAD = OK_SSE + b"x-padding: " + b"p" * (MAX_HEADER_BYTES + 4096) + b"\r\n"
TRUNCATED = vllm_chunked()
# The last chunk's size line is "zz": every event was complete before it, and the
# record is final once that line's CRLF has arrived.
BAD_SIZE = Recording(TRUNCATED.wire[: -len(b"0\r\n\r\n")] + b"zz\r\n\r\n", TRUNCATED.chunk_ends)
BAD_SIZE.last_byte = len(BAD_SIZE.wire) - 3
BAD_STATUS = vllm_chunked(b"HTTP/1.1 OK\r\ncontent-type: text/event-stream\r\n")
BAD_STATUS.last_byte = BAD_STATUS.wire.index(b"\r\n\r\n") + 3  # decided once the head is complete
TRUNCATED_AT = TRUNCATED.wire.index(b"quick") + 20  # inside the second event

CASES: dict[str, tuple[Recording, Expected, str]] = {
    "vllm-chunked": (vllm_chunked(), VLLM_OK, "vllm"),
    "vllm-chunked-coalesced": (COALESCED, VLLM_OK, "vllm"),
    "vllm-content-length": (plain(OK_SSE, VLLM_BODY, VLLM_ENDS, length=True), VLLM_OK, "vllm"),
    "vllm-until-close": (plain(OK_SSE, VLLM_BODY, VLLM_ENDS, length=False), dataclasses.replace(VLLM_OK, kept=False),
                         "vllm"),
    "100-continue-first": (vllm_chunked(b"HTTP/1.1 100 Continue\r\n\r\n" + OK_SSE), VLLM_OK, "vllm"),
    "chunk-extensions": (vllm_chunked(ext=b";name=value;q=1"), VLLM_OK, "vllm"),
    "trailers": (vllm_chunked(trailer=b"x-request-id: 8c1f\r\nserver-timing: total;dur=12\r\n"), VLLM_OK, "vllm"),
    "connection-close-header": (vllm_chunked(OK_SSE + b"connection: close\r\n"),
                                dataclasses.replace(VLLM_OK, kept=False), "vllm"),
    "chat-reasoning": (chunked(OK_SSE, CHAT_BODY, CHAT_ENDS, events=CHAT_EVENTS),
                       Expected(chunk_tokens=(2, 1), output_tokens=3, prompt_tokens=9, finish="stop", invisible=0,
                                text="Hm. Hello", answer=" Hello", reasoning=2, answer_chunk=1), "openai-chat"),
    "chat-unknown-field": (chunked(OK_SSE, THINKING_BODY, THINKING_ENDS, events=THINKING_EVENTS),
                           Expected(chunk_tokens=(2, 1), output_tokens=3, prompt_tokens=9, finish="stop", invisible=0,
                                    text="Hm. Hello", answer=" Hello", answer_chunk=1, unrecognised=("thinking", 2),
                                    usage_reasoning=2), "openai-chat"),
    "http-400-json": (error_case(*HTTP_400), failed(
        status=400, error="http_400", detail='{"object":"error","message":"The model `gpt-4` does not exist."'),
        "vllm"),
    "http-429-chunked": (chunked(HTTP_429[0], HTTP_429[1], [], [10, len(HTTP_429[1]) - 10]), failed(
        status=429, error="http_429", detail='{"object":"error","message":"rate limited"'), "vllm"),
    "not-sse": (error_case(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n", b'{"choices":[]}'), failed(
        error="not_sse", detail="server answered Content-Type 'application/json'"), "vllm"),
    "malformed-status-line": (BAD_STATUS, failed(
        status=0, error="malformed", detail="not an HTTP response: b'HTTP/1.1 OK'", kept=False), "vllm"),
    "not-http": (Recording(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", []), failed(
        status=0, error="malformed", detail="not an HTTP response: b'SSH-2.0-OpenSSH_9.6'", kept=False), "vllm"),
    "malformed-chunk-size": (
        BAD_SIZE, dataclasses.replace(VLLM_OK, error="malformed", detail="bad chunk size line b'zz'", kept=False),
        "vllm"),
    "malformed-event": (
        chunked(OK_SSE, BAD_BODY, BAD_ENDS, events=BAD_EVENTS),
        Expected(error="malformed", detail="JSONDecodeError", chunk_tokens=(1, 1), output_tokens=2, invisible=0,
                 text=" The quick"), "vllm"),
    "server-error-in-stream": (chunked(OK_SSE, ERR_BODY, ERR_ENDS, events=ERR_EVENTS), Expected(
        error="server_error", detail="KV cache exhausted", chunk_tokens=(1,), output_tokens=1, finish=None,
        invisible=0, text=" The"), "vllm"),
    "reset-mid-stream": (cut_off(TRUNCATED, TRUNCATED_AT), Expected(
        error="reset_mid_stream", detail="server closed the connection mid-response", chunk_tokens=(1,),
        output_tokens=1, finish=None, invisible=0, text=" The", kept=False), "vllm"),
}


def split_points(rec: Recording, seed: int) -> Iterator[tuple[str, list[int]]]:
    """Every way of cutting the response the tests try: the cut offsets, in order."""
    n = len(rec.wire)
    yield "whole", []
    yield "byte by byte", list(range(1, n))
    if rec.reads:
        yield "one read per HTTP chunk", rec.reads
    step = 1 if n < 20_000 else 1021  # a header block over 64 KiB: every 1021st byte and around the limit
    ks = set(range(1, n, step))
    if step > 1:
        ks |= {k for k in range(MAX_HEADER_BYTES - 4, MAX_HEADER_BYTES + 400) if 0 < k < n}
    for k in sorted(ks):
        yield f"two reads at {k}", [k]
    rng = random.Random(seed)
    for i in range(3):
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(3, 40))))
        yield f"random split {i}", cuts


# -- the transport seam ---------------------------------------------------------------


class Wire:
    """A transport that only records what the connection does to it."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


@dataclass
class Outcome:
    rec: RequestRecord
    kept: bool  # back in the client's pool, transport untouched
    retry: bool  # the connection asked for the request to be sent again


def replay(client: StreamClient, rec_wire: Recording, cuts: list[int], conn: StreamConn | None = None) -> Outcome:
    """Feed one response to a connection, cut at ``cuts``, each read stamped with its end."""
    conn = conn or StreamConn(client)
    if conn.transport is None:
        conn.connection_made(Wire())  # type: ignore[arg-type]
    wire: Wire = conn.transport  # type: ignore[assignment]
    rec = RequestRecord(0, 4, 6)
    fut = client.loop.create_future()
    client.idle.clear()
    conn.begin(rec, fut, 600.0)
    bounds = [0, *cuts, len(rec_wire.wire)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        conn.received(rec_wire.wire[a:b], BASE_NS + b)
    if rec_wire.closes:
        conn.connection_lost(None)
    assert fut.done(), "the response ended but the request did not"
    kept = conn in client.idle and not (wire.closed or wire.aborted)
    return Outcome(rec, kept, fut.result() is RETRY)


def shape(rec: RequestRecord) -> dict:
    """Everything of a record but its stamps, which depend on where the reads were cut."""
    d = dataclasses.asdict(rec)
    for k in ("chunk_ns", "first_ns", "last_ns", "sent_ns", "intended_ns", "answer_ns"):
        d.pop(k)
    d["chunk_tokens"] = list(d["chunk_tokens"])
    return d


def stamp_of(byte: int, cuts: list[int], n: int) -> int:
    """The stamp of the read that holds ``byte``."""
    return BASE_NS + next((c for c in [*cuts, n] if c > byte), n)


def check(out: Outcome, rec_wire: Recording, want: Expected, cuts: list[int], how: str) -> None:
    rec, n = out.rec, len(rec_wire.wire)
    assert not out.retry, how
    assert (rec.status, rec.error) == (want.status, want.error), f"{how}: {rec.error_detail}"
    assert rec.error_detail.startswith(want.detail), how
    assert tuple(rec.chunk_tokens) == want.chunk_tokens, how
    assert (rec.output_tokens, rec.output_tokens_source) == (want.output_tokens, want.source), how
    assert (rec.server_prompt_tokens, rec.finish_reason) == (want.prompt_tokens, want.finish), how
    assert rec.invisible_tokens == want.invisible, how
    assert rec.output_text == want.text, how
    assert rec.text == (want.text if want.answer is None else want.answer), how  # what a live history sends back
    assert out.kept == want.kept, how
    # a chunk is stamped by the read that completed its event
    assert list(rec.chunk_ns) == [stamp_of(e, cuts, n) for e in rec_wire.chunk_ends[: len(rec.chunk_ns)]], how
    assert rec.first_ns == (rec.chunk_ns[0] if rec.chunk_ns else 0), how
    assert rec.reasoning_chunk_tokens == want.reasoning, how
    assert (rec.unrecognised_field, rec.unrecognised_tokens) == want.unrecognised, how
    assert rec.reasoning_tokens_usage == want.usage_reasoning, how
    assert rec.answer_ns == (rec.chunk_ns[want.answer_chunk] if len(rec.chunk_ns) > want.answer_chunk else 0), how
    if rec_wire.last_byte is not None:
        assert rec.last_ns == stamp_of(n - 1 if rec_wire.last_byte < 0 else rec_wire.last_byte, cuts, n), how


def run_case(rec_wire: Recording, want: Expected, backend: str, *, fast_path: bool = True) -> int:
    """Replay a case at every split; return how many splits were tried."""

    async def main() -> int:
        client = StreamClient(Target("http://127.0.0.1:9", backend, "m", save_text=True), fast_path=fast_path)
        first: dict | None = None
        tried = 0
        for how, cuts in split_points(rec_wire, seed=len(rec_wire.wire)):
            out = replay(client, rec_wire, cuts)
            check(out, rec_wire, want, cuts, how)
            if first is None:
                first = shape(out.rec)
            assert shape(out.rec) == first, how  # identical, field by field, for every split
            tried += 1
        return tried

    return asyncio.run(main())


@pytest.mark.parametrize("name", list(CASES))
def test_every_split_gives_the_same_record(name: str) -> None:
    rec_wire, want, backend = CASES[name]
    assert run_case(rec_wire, want, backend) >= len(rec_wire.wire)


@pytest.mark.parametrize("name", ["vllm-chunked", "chunk-extensions", "chat-reasoning"])
def test_fast_path_off_gives_the_same_record(name: str) -> None:
    rec_wire, want, backend = CASES[name]
    run_case(rec_wire, want, backend, fast_path=False)


def test_headers_over_64_kib_are_refused_however_they_arrive() -> None:
    rec_wire = vllm_chunked(BIG_HEAD)
    rec_wire.last_byte = None  # refused as soon as 64 KiB are buffered without an end, or at the end
    want = failed(status=0, error="malformed", detail="response headers larger than 64 KiB", kept=False)
    run_case(rec_wire, want, "vllm")


def test_text_is_not_kept_unless_asked_and_the_rest_is_unchanged() -> None:
    async def main() -> tuple[Outcome, Outcome]:
        rec_wire = vllm_chunked()
        lean = StreamClient(Target("http://127.0.0.1:9", "vllm", "m"))
        full = StreamClient(Target("http://127.0.0.1:9", "vllm", "m", save_text=True))
        return replay(lean, rec_wire, rec_wire.reads), replay(full, rec_wire, rec_wire.reads)

    lean, full = asyncio.run(main())
    assert lean.rec.text == "" and full.rec.text == VLLM_OK.text
    assert {**shape(lean.rec), "text": ""} == {**shape(full.rec), "text": ""}
    assert lean.rec.invisible_tokens == 1


def test_a_kept_connection_reads_the_next_response_afresh() -> None:
    """Keep-alive: the second response on one connection parses as if it were the first,
    whatever state the first one left (here: a response that ended mid-read of a chunk)."""

    async def main() -> list[Outcome]:
        client = StreamClient(Target("http://127.0.0.1:9", "vllm", "m", save_text=True))
        conn = StreamConn(client)
        outs = []
        for rec_wire in (COALESCED, CASES["http-400-json"][0], CASES["trailers"][0], vllm_chunked()):
            outs.append(replay(client, rec_wire, [c for c in (7, 123, 2000) if c < len(rec_wire.wire)], conn))
        return outs

    outs = asyncio.run(main())
    assert [o.kept for o in outs] == [True, True, True, True]
    assert [o.rec.error for o in outs] == [None, "http_400", None, None]
    assert shape(outs[0].rec) == shape(outs[2].rec) == shape(outs[3].rec)


def test_bytes_on_an_idle_connection_close_it() -> None:
    async def main() -> tuple[bool, bool]:
        client = StreamClient(Target("http://127.0.0.1:9", "vllm", "m"))
        conn = StreamConn(client)
        out = replay(client, CASES["vllm-content-length"][0], [], conn)
        conn.received(b"HTTP/1.1 200 OK\r\n", BASE_NS)  # nothing was asked
        return out.kept, conn.transport.closed  # type: ignore[union-attr]

    kept, closed = asyncio.run(main())
    assert kept and closed
