"""A fast, exact streaming server for measuring the client (not an engine emulator).

It answers OpenAI completions, OpenAI chat and SGLang ``/generate`` requests with a
stream whose timing is fixed by the command line: the first token ``--ttft-ms`` after
the request arrived, then one chunk every ``--itl-ms``. It is written on a raw
``asyncio.Protocol`` over uvloop so that it can keep 1,024 streams on time on one
core, and it logs the moment it handed every chunk to the kernel
(``time.perf_counter_ns``, i.e. CLOCK_MONOTONIC, the same clock the client stamps
with), so a benchmark can subtract the server's truth from what the client reports.

Endpoints besides the three streaming ones: ``GET /v1/models``, ``GET /stats``
(requests served, streams in flight, the most ever in flight), ``GET /truth`` (per
request: arrival and chunk send stamps) and ``POST /reset`` (clear both).

With ``--itl-ms 0 --ttft-ms 0`` a whole response is written at once, so that the server
costs next to nothing and the client is what saturates.

Usage::

    python tests/servers/stream_server.py --port 0 --ttft-ms 100 --itl-ms 20
    # prints "LISTENING <port>" on stdout once it accepts connections
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency of the project
    uvloop = None

perf_ns = time.perf_counter_ns

FAULT_KINDS = ("429", "500", "reset-before", "reset-mid", "malformed", "stall")


@dataclass
class Options:
    ttft_ms: float = 100.0
    itl_ms: float = 20.0
    tokens: int | None = None  # None: as many as the request asks for
    tokens_per_chunk: int = 1
    usage: bool = True
    close_after_response: bool = False
    content_type: str = "text/event-stream"
    fail_every: int = 0
    fail_kind: str = "500"
    stall_ms: float = 2000.0
    truth: bool = True
    model: str = "stream-test"
    record: str | None = None  # append every request body to this file (one JSON a line)
    max_model_len: int | None = None  # stated in /v1/models


@dataclass
class Stats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    connections: int = 0
    truth: list[dict] = field(default_factory=list)
    record: object = None  # the open --record file


_WHOLE_RESPONSES: dict[tuple, bytes] = {}
_EVENTS: dict[tuple, bytes] = {}


def _chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class Renderer:
    """Builds the SSE events of one response in the dialect of its endpoint."""

    def __init__(self, kind: str, model: str, prompt_tokens: int, usage: bool) -> None:
        self.kind = kind
        self.model = model
        self.pt = prompt_tokens
        self.usage = usage
        self.text = ""

    def role(self) -> bytes | None:
        if self.kind != "chat":
            return None
        obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": self.model,
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        if self.usage:
            obj["usage"] = {"prompt_tokens": self.pt, "completion_tokens": 0, "total_tokens": self.pt}
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def token(self, done: int, k: int, last: bool) -> bytes:
        """The event carrying tokens ``done+1 .. done+k`` (``done`` already sent).

        The OpenAI dialects' events depend only on these arguments and the prompt
        length, so they are rendered once and reused: at 1,024 streams this server
        must write 51k chunks/s from one core and stay on time.
        """
        if self.kind == "sglang":
            return self._render(done, k, last)
        key = (self.kind, self.model, self.pt, self.usage, done, k, last)
        event = _EVENTS.get(key)
        if event is None:
            if len(_EVENTS) > 200_000:
                _EVENTS.clear()
            event = _EVENTS[key] = self._render(done, k, last)
        return event

    def _render(self, done: int, k: int, last: bool) -> bytes:
        piece = "".join(f" t{done + i}" for i in range(1, k + 1))
        total = done + k
        fin = "length" if last else None
        usage = {"prompt_tokens": self.pt, "completion_tokens": total, "total_tokens": self.pt + total}
        if self.kind == "sglang":
            self.text += piece
            meta = {"prompt_tokens": self.pt, "completion_tokens": total,
                    "finish_reason": {"type": "length", "length": total} if last else None}
            obj = {"text": self.text, "meta_info": meta, "index": 0}
        elif self.kind == "chat":
            obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": self.model,
                   "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": fin}]}
            if self.usage:
                obj["usage"] = usage
        else:
            obj = {"id": "cmpl-1", "object": "text_completion", "model": self.model,
                   "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": fin}]}
            if self.usage:
                obj["usage"] = usage
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def tail(self, total: int) -> bytes:
        out = b""
        if self.usage and self.kind != "sglang":
            usage = {"prompt_tokens": self.pt, "completion_tokens": total, "total_tokens": self.pt + total}
            out += b"data: " + orjson.dumps({"id": "cmpl-1", "choices": [], "usage": usage}) + b"\n\n"
        return out + b"data: [DONE]\n\n"


def _endpoint_kind(path: bytes) -> str | None:
    if path.endswith(b"/chat/completions"):
        return "chat"
    if path.endswith(b"/completions"):
        return "completions"
    if path.endswith(b"/generate"):
        return "sglang"
    return None


def _wanted_tokens(body: dict, kind: str) -> int:
    if kind == "sglang":
        return int((body.get("sampling_params") or {}).get("max_new_tokens") or 16)
    return int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)


def _prompt_of(body: dict, kind: str) -> str:
    if kind == "chat":
        return " ".join(str(m.get("content", "")) for m in body.get("messages") or [])
    if kind == "sglang":
        return str(body.get("text") or "")
    return str(body.get("prompt") or "")


def _request_id(prompt: str, fallback: int) -> int:
    """Benchmarks put ``id=N`` at the start of a prompt to match truth to records."""
    if prompt.startswith("id="):
        head = prompt[3:].split(" ", 1)[0]
        if head.isdigit():
            return int(head)
    return fallback


class StreamServerProtocol(asyncio.Protocol):
    """One client connection: parse requests one at a time, stream each answer."""

    def __init__(self, opts: Options, stats: Stats) -> None:
        self.opts = opts
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.busy:
            self.busy = False
            self.stats.in_flight -= 1

    def data_received(self, data: bytes) -> None:
        recv_ns = perf_ns()
        self.buf = self.buf + data if self.buf else data
        while not self.busy and not self.closed:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end]
            line_end = head.find(b"\r\n")
            method, path, _ = (head[:line_end if line_end >= 0 else None].decode("latin-1").split(" ") + ["", ""])[:3]
            length = 0
            cl = head.lower().find(b"\r\ncontent-length:")
            if cl >= 0:
                value_end = head.find(b"\r\n", cl + 2)
                length = int(head[cl + 17 : value_end if value_end >= 0 else None])
            end = head_end + 4 + length
            if len(self.buf) < end:
                return
            body = self.buf[head_end + 4:end]
            self.buf = self.buf[end:]
            self.handle(method, path.encode(), body, recv_ns)

    # -- responses -------------------------------------------------------------

    def send_plain(self, status: str, payload: bytes, ctype: bytes = b"application/json") -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
            % (status.encode(), ctype, len(payload), payload)
        )

    def handle(self, method: str, path: bytes, body: bytes, recv_ns: int) -> None:
        stats = self.stats
        if method == "GET" and path.startswith(b"/v1/models"):
            model = {"id": self.opts.model, "object": "model"}
            if self.opts.max_model_len:
                model["max_model_len"] = self.opts.max_model_len
            self.send_plain("200 OK", orjson.dumps({"object": "list", "data": [model]}))
            return
        if method == "GET" and path.startswith(b"/stats"):
            self.send_plain("200 OK", orjson.dumps({
                "requests": stats.requests, "in_flight": stats.in_flight,
                "max_in_flight": stats.max_in_flight, "connections": stats.connections}))
            return
        if method == "GET" and path.startswith(b"/truth"):
            self.send_plain("200 OK", orjson.dumps(stats.truth))
            return
        if method == "POST" and path.startswith(b"/reset"):
            stats.truth.clear()
            stats.requests = stats.connections = 0
            stats.max_in_flight = stats.in_flight
            self.send_plain("200 OK", b"{}")
            return
        kind = _endpoint_kind(path)
        if method != "POST" or kind is None:
            self.send_plain("404 Not Found", b'{"error": {"message": "not found"}}')
            return
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.send_plain("400 Bad Request", b'{"error": {"message": "body is not JSON"}}')
            return
        stats.requests += 1
        seq = stats.requests
        if stats.record is not None:
            stats.record.write(body + b"\n")  # type: ignore[attr-defined]
        opts = self.opts
        fault = opts.fail_kind if opts.fail_every and seq % opts.fail_every == 0 else None
        if fault == "429":
            self.send_plain("429 Too Many Requests", b'{"error": {"message": "rate limited"}}')
            return
        if fault == "500":
            self.send_plain("500 Internal Server Error", b'{"error": {"message": "injected failure"}}')
            return
        if fault == "reset-before":
            assert self.transport is not None
            self.transport.abort()
            return
        n = opts.tokens if opts.tokens is not None else _wanted_tokens(req, kind)
        prompt = _prompt_of(req, kind)
        rid = _request_id(prompt, seq)
        self.busy = True
        stats.in_flight += 1
        if stats.in_flight > stats.max_in_flight:
            stats.max_in_flight = stats.in_flight
        Stream(self, Renderer(kind, opts.model, max(1, len(prompt.split())), opts.usage), n, rid, recv_ns, fault).start()

    def finished(self) -> None:
        self.busy = False
        self.stats.in_flight -= 1
        if self.opts.close_after_response and self.transport is not None:
            self.transport.close()  # keep-alive was advertised; llama.cpp does this too
        elif self.buf:
            self.data_received(b"")


class Stream:
    """The timed answer to one request; chunk k is due at recv + ttft + k*itl."""

    def __init__(self, conn: StreamServerProtocol, r: Renderer, n: int, rid: int, recv_ns: int,
                 fault: str | None) -> None:
        self.conn = conn
        self.r = r
        self.n = max(0, n)
        self.k = max(1, conn.opts.tokens_per_chunk)
        self.done = 0
        self.rid = rid
        self.recv_ns = recv_ns
        self.sends: list[int] = []
        self.fault = fault
        self.t0 = conn.loop.time()
        self.extra_s = 0.0  # added to every later due time once a stall was injected
        self.pending = b""  # response head not yet written

    def start(self) -> None:
        conn, opts = self.conn, self.conn.opts
        assert conn.transport is not None
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n"
                b"Cache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n" % opts.content_type.encode())
        role = self.r.role()
        if opts.ttft_ms <= 0 and opts.itl_ms <= 0 and self.fault is None:
            # Saturation mode: identical requests get the identical response, built
            # once, so that this server costs next to nothing and the client saturates.
            key = (self.r.kind, self.n, self.k, self.r.pt)
            whole = _WHOLE_RESPONSES.get(key)
            if whole is None:
                parts = [head]
                if role:
                    parts.append(_chunk(role))
                done = 0
                while done < self.n:
                    k = min(self.k, self.n - done)
                    parts.append(_chunk(self.r.token(done, k, done + k >= self.n)))
                    done += k
                parts.append(_chunk(self.r.tail(self.n)) + b"0\r\n\r\n")
                whole = _WHOLE_RESPONSES[key] = b"".join(parts)
            self.done = self.n
            now = perf_ns()
            conn.transport.write(whole)
            self.sends.append(now)
            self.finish(terminal=False)
            return
        # The status line and headers go out with the first chunk: one write instead
        # of two per request keeps a burst of 1,024 arrivals short, so that the way
        # there (client send -> server arrival) is not mostly this server's own work.
        self.pending = head + (_chunk(role) if role else b"")
        self.schedule(opts.ttft_ms / 1000.0)

    def schedule(self, at_s: float) -> None:
        self.conn.timer = self.conn.loop.call_at(self.t0 + at_s, self.tick)

    def tick(self) -> None:
        conn, opts = self.conn, self.conn.opts
        if conn.closed or conn.transport is None:
            return
        if self.n == 0:
            self.finish()
            return
        k = min(self.k, self.n - self.done)
        last = self.done + k >= self.n
        payload = self.r.token(self.done, k, last)
        if self.fault == "malformed" and self.done == 0:
            payload = b"data: {not json\n\n"
        now = perf_ns()
        if self.pending:
            conn.transport.write(self.pending + _chunk(payload))
            self.pending = b""
        else:
            conn.transport.write(_chunk(payload))
        if opts.truth:
            self.sends.append(now)
        self.done += k
        if self.fault == "reset-mid" and self.done >= min(self.n, 2):
            conn.transport.abort()
            return
        if last:
            self.finish()
            return
        if self.fault == "stall" and self.done == self.k:
            self.extra_s += opts.stall_ms / 1000.0
        self.schedule(opts.ttft_ms / 1000.0 + (self.done // self.k) * opts.itl_ms / 1000.0 + self.extra_s)

    def finish(self, terminal: bool = True) -> None:
        conn = self.conn
        assert conn.transport is not None
        if terminal:
            conn.transport.write(self.pending + _chunk(self.r.tail(self.done)) + b"0\r\n\r\n")
            self.pending = b""
        if conn.opts.truth:
            conn.stats.truth.append({"id": self.rid, "recv_ns": self.recv_ns, "send_ns": self.sends,
                                     "tokens": self.done, "per_chunk": self.k})
        conn.finished()


async def serve(host: str, port: int, opts: Options, ready: asyncio.Future | None = None) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats(record=open(opts.record, "ab", buffering=0) if opts.record else None)  # noqa: SIM115
    server = await loop.create_server(lambda: StreamServerProtocol(opts, stats), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


@contextmanager
def spawn(*args: str, cpu: int | None = None, nice: int | None = None) -> Iterator[int]:
    """Run this server in a subprocess on a free port (``--port 0``) and yield the port;
    the server is always stopped afterwards. For perf/client.py and the tests."""
    cmd = [sys.executable, os.path.abspath(__file__), "--port", "0", *args]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    if nice is not None:
        os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("LISTENING"):
            raise RuntimeError(f"stream server did not start: {line!r}")
        yield int(line.split()[1])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Options]:
    ap = argparse.ArgumentParser(description="Exact-timing SSE server for client benchmarks.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as LISTENING <port>)")
    ap.add_argument("--ttft-ms", type=float, default=100.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=None, help="tokens per response (default: what the request asks)")
    ap.add_argument("--tokens-per-chunk", type=int, default=1)
    ap.add_argument("--no-usage", action="store_true", help="send no usage at all (client falls back to chunks)")
    ap.add_argument("--close-after-response", action="store_true",
                    help="advertise keep-alive but close the connection after each streamed response")
    ap.add_argument("--content-type", default="text/event-stream")
    ap.add_argument("--fail-every", type=int, default=0, help="inject --fail-kind into every Nth request")
    ap.add_argument("--fail-kind", choices=FAULT_KINDS, default="500")
    ap.add_argument("--stall-ms", type=float, default=2000.0)
    ap.add_argument("--no-truth", action="store_true", help="do not log send stamps")
    ap.add_argument("--model", default="stream-test")
    ap.add_argument("--record", default=None, help="append every request body to this file (JSON lines)")
    ap.add_argument("--max-model-len", type=int, default=None, help="max_model_len stated in /v1/models")
    ap.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    args = ap.parse_args(argv)
    opts = Options(ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, tokens=args.tokens,
                   tokens_per_chunk=args.tokens_per_chunk, usage=not args.no_usage,
                   close_after_response=args.close_after_response, content_type=args.content_type,
                   fail_every=args.fail_every, fail_kind=args.fail_kind, stall_ms=args.stall_ms,
                   truth=not args.no_truth, model=args.model, record=args.record, max_model_len=args.max_model_len)
    return args, opts


def main(argv: list[str] | None = None) -> int:
    args, opts = parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if uvloop is not None:
        uvloop.install()
    try:
        asyncio.run(serve(args.host, args.port, opts))
    except OSError as exc:
        print(f"stream_server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
