"""The HTTP/1.1 response reader: one keep-alive connection and the request it carries.

:class:`StreamConn` is the hot class. Every read is stamped before any parsing
(``data_received``, or the kernel's stamp handed in by :mod:`loadgen.client.stamped`
through :meth:`StreamConn.received`), and every event completed by that read shares
the stamp. The body -- chunked transfer-encoding, content-length or read-until-close,
after any ``1xx`` interim responses -- is de-framed and SSE-framed on bytes, each
event's JSON is decoded once by the wire protocol's parser, and per chunk the only
work is two appends. The transport is anything with ``write``, ``close`` and
``abort``, which is what lets the tests replay recorded responses without a socket.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Protocol

from loadgen.protocols.base import WireProtocol
from loadgen.records import RequestRecord
from loadgen.redaction import mask_secrets
from loadgen.sse import SSEFramer

MAX_HEADER_BYTES = 64 * 1024
ERROR_BODY_BYTES = 2048


@dataclass
class LiveCounters:
    """Plain ints the client updates; the progress display reads them on a timer."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    output_tokens: int = 0


class ConnOwner(Protocol):
    """What a connection uses of the pool that opened it (:class:`loadgen.client.pool.StreamClient`)."""

    protocol: WireProtocol
    counters: LiveCounters | None
    secrets: tuple[str, ...]
    timeout_s: float
    save_text: bool
    fast_path: bool
    loop: asyncio.AbstractEventLoop
    idle: list[StreamConn]
    all: set[StreamConn]


_HEADERS, _CHUNKED, _LENGTH, _UNTIL_CLOSE, _DONE, _BROKEN = range(6)
RETRY = object()  # future result: the connection died before any response byte


class StreamConn(asyncio.Protocol):
    """One keep-alive connection and the state of the one request it carries.

    All per-request parsing state lives here (not in a separate object) so that the
    hot path touches one object's slots.
    """

    __slots__ = (
        "client", "transport", "closed", "rec", "fut", "timer", "phase", "got", "hbuf",
        "cbuf", "crem", "ctrailer", "blen", "sse", "framer", "parse", "pstate",
        "counted", "last_ct", "texts", "rtexts", "errbody", "keep", "counters", "fast_path", "broken", "lead",
    )

    def __init__(self, client: ConnOwner) -> None:
        self.client = client
        # the one-chunk-one-event shortcut in ``received``; off only to measure what it buys
        self.fast_path = client.fast_path
        self.counters: LiveCounters | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.rec: RequestRecord | None = None
        self.fut: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.framer = SSEFramer()
        self.parse = client.protocol.parse
        self._reset()

    def _reset(self) -> None:
        self.phase = _HEADERS
        self.got = False
        self.hbuf = b""
        self.cbuf = b""
        self.crem = 0
        self.ctrailer = False
        self.blen = 0
        self.sse = True
        self.pstate = None
        self.counted = 0
        self.last_ct: int | None = None
        self.lead = 0  # chunks before the first answer chunk (reasoning, unknown field, no text)
        # generated text is kept only when asked for (--save-text): per chunk it is a
        # string per stream, ~13 MB at 1,024 streams of 256 tokens. The answer's text and
        # the rest (reasoning, an unknown field's text) are kept apart: a live history
        # carries back only the answer, as a chat client does.
        self.texts: list[str] | None = [] if self.client.save_text else None
        self.rtexts: list[str] | None = [] if self.client.save_text else None
        self.errbody = b""
        self.keep = True
        self.framer.reset()

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.all.discard(self)
        if self.rec is None:
            return
        if self.phase == _UNTIL_CLOSE:
            self._finish(None)
        elif not self.got:
            self._give_back(RETRY)
        else:
            detail = f"connection lost mid-response: {exc}" if exc else "server closed the connection mid-response"
            self._finish("reset_mid_stream", detail)

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost decides what it means

    def data_received(self, data: bytes) -> None:
        self.received(data, perf_counter_ns())

    def received(self, data: bytes, t: int) -> None:
        """Bytes of the response, stamped ``t`` (their arrival, before any parsing)."""
        rec = self.rec
        if rec is None:  # bytes on an idle connection: it is unusable
            self.keep = False
            self.transport.close()  # type: ignore[union-attr]
            return
        self.got = True
        rec.last_ns = t
        phase = self.phase
        if phase == _CHUNKED and not self.crem and not self.cbuf and self.sse and self.fast_path:
            # Fast path, the common case while streaming: the read is exactly one
            # HTTP chunk holding exactly one single-line ``data:`` event.
            i = data.find(b"\r\n", 0, 10)
            n = len(data)
            if i > 0 and data[i + 2 : i + 8] == b"data: " and data.endswith(b"\n\n\r\n") \
                    and data.find(b"\n", i + 8) == n - 4 and data.find(b"\r", i + 8, n - 4) < 0 \
                    and self.framer.idle:
                try:
                    size = int(data[:i], 16)
                except ValueError:
                    size = -1
                if size == n - i - 4:
                    self._handle((data[i + 8 : n - 4],), t)
                    return
        if phase == _CHUNKED:
            body = self._dechunk(data)
        elif phase == _HEADERS:
            body = self._head(data)
        elif phase == _LENGTH:
            if len(data) >= self.blen:
                data = data[: self.blen]
                self.phase = _DONE
            self.blen -= len(data)
            body = data
        elif phase == _UNTIL_CLOSE:
            body = data
        else:  # bytes after the end of the response
            self.keep = False
            return
        if body:
            if self.sse:
                self._events(body, t)
            elif len(self.errbody) < ERROR_BODY_BYTES:
                self.errbody += body[:ERROR_BODY_BYTES]
        if self.phase >= _DONE and self.rec is not None:
            if self.phase == _DONE:
                self._finish(None)
            else:
                self._fail_close("malformed", self.broken)

    # -- HTTP framing ----------------------------------------------------------

    def _head(self, data: bytes) -> bytes:
        buf = self.hbuf + data if self.hbuf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                self._fail_close("malformed", "response headers larger than 64 KiB")
            self.hbuf = buf
            return b""
        self.hbuf = b""
        if end + 4 > MAX_HEADER_BYTES:  # the same limit when the whole head came in one read
            self._fail_close("malformed", "response headers larger than 64 KiB")
            return b""
        lines = buf[:end].split(b"\r\n")
        rest = buf[end + 4 :]
        status_line = lines[0].split(b" ", 2)
        try:
            if not status_line[0].startswith(b"HTTP/"):
                raise ValueError
            status = int(status_line[1])
        except (ValueError, IndexError):
            self._fail_close("malformed", f"not an HTTP response: {lines[0][:80]!r}")
            return b""
        if 100 <= status < 200:  # 100 Continue and friends: a final response follows
            return self._head(rest) if rest else b""
        chunked = False
        length = -1
        ctype = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    self._fail_close("malformed", f"bad Content-Length {value.strip()[:40]!r}")
                    return b""
            elif name == b"content-type":
                ctype = value.strip().lower()
            elif name == b"connection" and b"close" in value.lower():
                self.keep = False
        rec = self.rec
        assert rec is not None
        rec.status = status
        if status != 200:
            self.sse = False
            rec.error = f"http_{status}"
        elif not ctype.startswith(b"text/event-stream"):
            self.sse = False
            rec.error = "not_sse"
            rec.error_detail = (
                f"server answered Content-Type {ctype.decode('latin-1') or '(none)'!r}, not a "
                "text/event-stream: check --endpoint and --backend"
            )
        if chunked:
            self.phase = _CHUNKED
            return self._dechunk(rest) if rest else b""
        if length >= 0:
            if len(rest) >= length:
                self.phase = _DONE
                return rest[:length]
            self.phase = _LENGTH
            self.blen = length - len(rest)
            return rest
        self.phase = _UNTIL_CLOSE
        self.keep = False
        return rest

    def _dechunk(self, data: bytes) -> bytes:
        """Strip chunked transfer-encoding; return the payload bytes this read holds.

        ``crem`` counts the bytes still owed to the current chunk *including* its
        trailing CRLF, so the common case costs one find, one int and one slice.
        """
        if self.cbuf:
            data = self.cbuf + data
            self.cbuf = b""
        n = len(data)
        pos = 0
        rem = self.crem
        out: list[bytes] = []
        while pos < n:
            if rem:
                end = pos + rem
                if end > n:
                    dend = end - 2  # where this chunk's data ends
                    if dend > pos:
                        out.append(data[pos:dend] if dend < n else (data[pos:] if pos else data))
                    rem = end - n
                    break
                if rem > 2:
                    out.append(data[pos : end - 2])
                pos = end
                rem = 0
                if pos >= n:
                    break
            i = data.find(b"\r\n", pos)
            if i < 0:
                self.cbuf = data[pos:]
                break
            if self.ctrailer:
                if i == pos:
                    self.phase = _DONE
                    if i + 2 < n:  # bytes beyond the response: the connection is out of step
                        self.keep = False
                    break
                pos = i + 2
                continue
            try:
                size = int(data[pos:i], 16)
            except ValueError:
                line = data[pos:i]
                try:
                    size = int(line.partition(b";")[0], 16)  # chunk extensions
                except ValueError:
                    # fail once the events this read completed before the line are counted
                    self.phase = _BROKEN
                    self.broken = f"bad chunk size line {line[:40]!r}"
                    rem = 0
                    break
            pos = i + 2
            if size == 0:
                self.ctrailer = True
            else:
                rem = size + 2
        self.crem = rem
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    # -- SSE events ------------------------------------------------------------

    def _events(self, body: bytes, t: int) -> None:
        payloads = self.framer.feed(body)
        if payloads:
            self._handle(payloads, t)

    def _handle(self, payloads: list[bytes] | tuple[bytes, ...], t: int) -> None:
        """Account for the events of one read, all stamped ``t``."""
        rec = self.rec
        assert rec is not None
        parse = self.parse
        state = self.pstate
        chunk_ns = rec.chunk_ns
        chunk_tokens = rec.chunk_tokens
        before = counted = self.counted
        for data in payloads:
            try:
                content, ct, pt, fin, text, err, cached = parse(data, state)
            except Exception as exc:  # a malformed event spoils the request, not the run
                if data == b"[DONE]":
                    continue
                if rec.error is None:
                    rec.error = "malformed"
                    rec.error_detail = f"{type(exc).__name__}: {exc}"[:300]
                continue
            if content:
                if ct is None:
                    k = 1
                    counted += 1
                else:
                    k = ct - counted
                    if k < 0:
                        k = 0
                    counted = ct
                if not chunk_ns:
                    rec.first_ns = t
                if content != 1:  # not an answer (protocols.base): reasoning, or an unknown field's text
                    if content == 2:
                        rec.reasoning_chunk_tokens += k
                    else:
                        rec.unrecognised_tokens += k
                    if self.lead == len(chunk_ns):
                        self.lead += 1
                    texts = self.rtexts
                else:
                    texts = self.texts
                chunk_ns.append(t)
                chunk_tokens.append(k)
                if not text:
                    rec.invisible_tokens += k
                elif texts is not None:
                    texts.append(text)
            elif err is not None:
                if rec.error is None:
                    rec.error = "server_error"
                    rec.error_detail = err
                continue
            elif ct is not None and ct > counted and (self.last_ct is not None or not chunk_ns):
                # Tokens without visible text (a token that decodes to nothing yet, or a
                # stream whose only sign of output is its usage): still output, timed here.
                # Running usage seen before, or nothing counted yet, tells this is not a
                # final usage-only chunk totalling chunks already counted one by one.
                if not chunk_ns:
                    rec.first_ns = t
                if self.lead == len(chunk_ns):
                    self.lead += 1
                chunk_ns.append(t)
                chunk_tokens.append(ct - counted)
                rec.invisible_tokens += ct - counted
                counted = ct
            if ct is not None:
                self.last_ct = ct
            if pt is not None:
                rec.server_prompt_tokens = pt
                if cached is not None:
                    rec.cached_tokens = cached
            if fin is not None:
                rec.finish_reason = fin
        self.counted = counted
        if self.counters is not None and counted != before:
            self.counters.output_tokens += counted - before

    # -- request lifecycle -----------------------------------------------------

    def begin(self, rec: RequestRecord, fut: asyncio.Future, timeout_s: float) -> None:
        self._reset()
        if rec.keep_text and self.texts is None:
            self.texts = []
            self.rtexts = []
        self.rec = rec
        self.fut = fut
        self.counters = self.client.counters
        self.pstate = self.client.protocol.new_state()
        self.timer = self.client.loop.call_later(timeout_s, self._on_timeout)

    def _on_timeout(self) -> None:
        self.timer = None
        if self.rec is None:
            return
        self._fail_close("timeout", f"no complete response within {self.client.timeout_s:g} s")

    def _fail_close(self, kind: str, detail: str) -> None:
        self.keep = False
        self._finish(kind, detail)
        if self.transport is not None:
            self.transport.abort()

    def _give_back(self, result: object) -> None:
        """End this connection's part in the request without finalising the record."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        fut = self.fut
        self.rec = None
        self.fut = None
        if fut is not None and not fut.done():
            fut.set_result(result)

    def _finish(self, kind: str | None, detail: str = "") -> None:
        rec = self.rec
        if rec is None:
            return
        if kind is not None and rec.error is None:
            rec.error = kind
            rec.error_detail = detail
        if rec.error is not None:
            if rec.error.startswith("http_") and not rec.error_detail:
                rec.error_detail = self.errbody[:300].decode("utf-8", "replace")
            if self.client.secrets:  # a server may echo the key it was sent
                rec.error_detail = mask_secrets(rec.error_detail, self.client.secrets)
        if self.last_ct is not None:
            rec.output_tokens = self.last_ct
            rec.output_tokens_source = "usage"
        else:
            rec.output_tokens = len(rec.chunk_ns)
            rec.output_tokens_source = "chunks"
        if rec.error is None and not rec.chunk_ns:
            rec.error = "no_content"
            rec.error_detail = "the stream ended without any output"
        if self.texts:
            rec.text = "".join(self.texts)
        if self.rtexts:
            rec.reasoning_text = "".join(self.rtexts)
        if self.lead < len(rec.chunk_ns):  # the first answer chunk, found once per request
            rec.answer_ns = rec.chunk_ns[self.lead]
        if self.pstate is not None:
            rec.reasoning_tokens_usage, rec.unrecognised_field = self.client.protocol.reasoning_report(self.pstate)
        reusable = self.keep and self.phase == _DONE and not self.closed
        self._give_back(None)
        if reusable:
            self.client.idle.append(self)
        elif self.transport is not None and not self.closed:
            self.transport.close()

    def cancel(self) -> None:
        """The request's task was cancelled (Ctrl-C after the grace period)."""
        self.keep = False
        self._finish("cancelled", "stopped by the user before the response ended")
        if self.transport is not None:
            self.transport.abort()
