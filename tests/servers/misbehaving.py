"""A small HTTP/1.1 server that misbehaves on purpose, for the fault-injection tests.

Raw asyncio on 127.0.0.1 (a random free port), run in a background thread so that a
test can drive it while a ``loadgen`` subprocess or the in-process API talks to it
over real sockets. It speaks just enough OpenAI: ``GET /v1/models``, and streaming
``POST /v1/completions`` (one token per event, running usage when
``stream_options.continuous_usage_stats`` is asked, a final usage chunk). Every
other path is a 404 (so ``/tokenize`` and ``/version`` are absent).

``mode`` picks what goes wrong with each streaming request after the first
``good_first`` ones (the first is loadgen's pre-flight test request). The modes are
the faults the issue lists: HTTP 429/500, resets before the first byte and mid
stream, a stall, malformed events, invalid UTF-8, a bad chunk size, a close right
after the headers, a 10 MB event, dribbled bytes (slowloris), an error body echoing
the request's credentials, and output tokens that decode to no visible text.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field

MODES = (
    "good", "http_429", "http_500", "reset_before", "reset_mid", "stall", "malformed", "invalid_utf8",
    "bad_chunk", "close_after_headers", "big_event", "slowloris", "echo_auth", "invisible", "usage_only",
)
BIG_EVENT_BYTES = 10 * 1024 * 1024
MODEL = "misbehaving"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class MisbehavingServer:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    mode: str = "good"
    good_first: int = 1
    ssl_context: ssl.SSLContext | None = None
    dribble_s: float = 0.002  # slowloris: the pause between two bytes
    port: int = 0
    streams: int = 0  # streaming requests seen
    seen_auth: list[str] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.base_events.Server | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    def set(self, mode: str, good_first: int = 1) -> MisbehavingServer:
        assert mode in MODES, mode
        self.mode, self.good_first, self.streams = mode, good_first, 0
        self.seen_auth.clear()
        return self

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> MisbehavingServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context, limit=1 << 20)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name="misbehaving-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("misbehaving server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> MisbehavingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    return
                keep = await self._respond(req, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            return
        finally:
            if not writer.is_closing():
                writer.close()

    async def _respond(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        if req.method == "GET" and req.path == "/v1/models":
            await _send_json(writer, 200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
            return True
        if req.method != "POST" or req.path != "/v1/completions":
            await _send_json(writer, 404, {"error": {"message": f"no route {req.path}"}})
            return True
        self.seen_auth.append(req.headers.get("authorization", ""))
        self.streams += 1
        body = json.loads(req.body)
        n = int(body.get("max_tokens") or 16)
        running = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))
        mode = "good" if self.streams <= self.good_first else self.mode
        return await _STREAMS.get(mode, _good)(self, writer, n, running, req)


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


async def _send_json(writer: asyncio.StreamWriter, status: int, obj: object) -> None:
    payload = json.dumps(obj).encode()
    writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (status, len(payload), payload))
    await writer.drain()


_SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(obj: object) -> bytes:
    return _chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")


def _token(i: int, text: str, running: bool, n: int) -> dict:
    obj: dict = {"choices": [{"index": 0, "text": text, "finish_reason": "length" if i == n else None}]}
    if running:
        obj["usage"] = {"completion_tokens": i}
    return obj


def _tail(n: int) -> bytes:
    return _event({"choices": [], "usage": {"completion_tokens": n}}) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _stream_bytes(n: int, running: bool, texts: list[str] | None = None) -> bytes:
    texts = texts or [f" t{i}" for i in range(1, n + 1)]
    return _SSE_HEAD + b"".join(_event(_token(i, texts[i - 1], running, n)) for i in range(1, n + 1)) + _tail(n)


async def _good(srv: MisbehavingServer, w: asyncio.StreamWriter, n: int, running: bool, req: Request) -> bool:
    w.write(_SSE_HEAD)
    for i in range(1, n + 1):
        w.write(_event(_token(i, f" t{i}", running, n)))
        await w.drain()
        await asyncio.sleep(0.001)
    w.write(_tail(n))
    await w.drain()
    return True


def _status(code: int):  # noqa: ANN202 - a handler factory
    async def respond(srv: MisbehavingServer, w: asyncio.StreamWriter, n: int, running: bool, req: Request) -> bool:
        await _send_json(w, code, {"error": {"message": f"injected HTTP {code}"}})
        return True
    return respond


def _abort(w: asyncio.StreamWriter) -> bool:
    """Close with a TCP reset (SO_LINGER 0), the way a crashing server's kernel does."""
    sock = w.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()
    return False


async def _reset_before(srv, w, n, running, req) -> bool:
    return _abort(w)


async def _reset_mid(srv, w, n, running, req) -> bool:
    w.write(_SSE_HEAD + _event(_token(1, " a", running, n)) + _event(_token(2, " b", running, n)))
    await w.drain()
    await asyncio.sleep(0.02)
    return _abort(w)


async def _stall(srv, w, n, running, req) -> bool:
    w.write(_SSE_HEAD + _event(_token(1, " a", running, n)))
    await w.drain()
    await asyncio.sleep(3600)  # the client's --timeout ends it
    return False


async def _write_then_close(w: asyncio.StreamWriter, data: bytes) -> bool:
    w.write(data)
    await w.drain()
    return False


async def _malformed(srv, w, n, running, req) -> bool:
    bad = _chunk(b'data: {"choices": [{"text": "x", "index": 0\n\n')
    return await _write_then_close(w, _SSE_HEAD + _event(_token(1, " a", running, n)) + bad + _tail(n))


async def _invalid_utf8(srv, w, n, running, req) -> bool:
    bad = _chunk(b'data: {"choices": [{"text": "\xff\xfe", "index": 0, "finish_reason": null}]}\n\n')
    return await _write_then_close(w, _SSE_HEAD + _event(_token(1, " a", running, n)) + bad + _tail(n))


async def _bad_chunk(srv, w, n, running, req) -> bool:
    return await _write_then_close(w, _SSE_HEAD + _event(_token(1, " a", running, n)) + b"zz\r\nxx\r\n")


async def _close_after_headers(srv, w, n, running, req) -> bool:
    return await _write_then_close(w, _SSE_HEAD)


async def _big_event(srv, w, n, running, req) -> bool:
    text = "x" * BIG_EVENT_BYTES
    return await _write_then_close(w, _stream_bytes(n, running, [text] + [f" t{i}" for i in range(2, n + 1)]))


async def _slowloris(srv, w, n, running, req) -> bool:
    data = _stream_bytes(n, running)
    for i in range(len(data)):
        w.write(data[i : i + 1])
        await w.drain()
        await asyncio.sleep(srv.dribble_s)
    return True


async def _echo_auth(srv, w, n, running, req) -> bool:
    await _send_json(w, 401, {"error": {"message": f"invalid credentials: {req.headers.get('authorization')}"}})
    return True


async def _invisible(srv, w, n, running, req) -> bool:
    """Every other token decodes to nothing (vLLM holds back an incomplete character)."""
    texts = ["" if i % 2 else f" t{i}" for i in range(1, n + 1)]
    return await _write_then_close(w, _stream_bytes(n, running, texts))


async def _usage_only(srv, w, n, running, req) -> bool:
    """No visible text at all; only the usage says tokens were generated."""
    return await _write_then_close(w, _stream_bytes(n, running, [""] * n))


_STREAMS = {
    "good": _good,
    "reset_before": _reset_before, "reset_mid": _reset_mid, "stall": _stall, "malformed": _malformed,
    "invalid_utf8": _invalid_utf8, "bad_chunk": _bad_chunk, "close_after_headers": _close_after_headers,
    "big_event": _big_event, "slowloris": _slowloris, "echo_auth": _echo_auth, "invisible": _invisible,
    "usage_only": _usage_only,
}
_STREAMS["http_429"] = _status(429)
_STREAMS["http_500"] = _status(500)
