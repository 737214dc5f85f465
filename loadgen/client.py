"""The streaming hot path: send a request, read its stream, stamp every chunk.

Why not aiohttp's response reader: measured on this machine (docs/client.md), its
per-read machinery (StreamReader, flow control, one task wake-up per read) delays
reads enough at 1,024 streams to add tens of milliseconds to TTFT and to the ITL
tail, and it saturates far earlier. So the streaming requests go through a small
HTTP/1.1 client built directly on an ``asyncio.Protocol`` (``_Conn``):

* every read is stamped before any parsing, and every event completed by that read
  shares the stamp. On Linux over plain TCP the stamp is the kernel's receive time of
  the packet (``SO_TIMESTAMPING``, read by ``_StampedSocket`` with ``recvmsg``), so a
  read that waited behind other sockets' work is still stamped when its bytes
  arrived; elsewhere (TLS, other systems) uvloop's transport is used and
  ``data_received`` stamps ``perf_counter_ns()`` as its first statement;
* the body (chunked transfer-encoding, content-length, or read-until-close) is
  de-framed and SSE-framed on bytes, and each event's JSON is decoded once (orjson);
* per chunk the only work is two list appends; figures are computed after the run;
* connections are kept alive in a pool that never holds more connections than
  requests in flight (the runner's concurrency gate sizes it);
* a request whose connection dies before any response byte arrived (a stale
  keep-alive connection, e.g. llama.cpp closes after every stream) is retried on a
  fresh connection and the retry counted in ``RequestRecord.retries``.

Control requests (``/v1/models``, ``/version``, ``/tokenize``) go through :mod:`loadgen.control`.

Error kinds written to ``RequestRecord.error`` (see docs/client.md): ``http_<status>``,
``not_sse``, ``connect``, ``reset_before_first_byte``, ``reset_mid_stream``,
``timeout``, ``malformed``, ``server_error``, ``no_content``, ``cancelled``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from dataclasses import dataclass
from time import perf_counter_ns, time_ns
from typing import Any
from urllib.parse import urlsplit

from loadgen.connection import DEFAULT as DEFAULT_CONNECTION
from loadgen.connection import Connection, cert_error_message, is_cert_error
from loadgen.protocols import get_protocol
from loadgen.protocols.base import WireProtocol
from loadgen.records import RequestRecord
from loadgen.secrets import mask_secrets, secret_values
from loadgen.sse import SSEFramer

MAX_HEADER_BYTES = 64 * 1024
ERROR_BODY_BYTES = 2048
DEFAULT_MAX_RETRIES = 2

_HEADERS, _CHUNKED, _LENGTH, _UNTIL_CLOSE, _DONE = range(5)
_RETRY = object()  # future result: the connection died before any response byte
_TIMESPEC = struct.Struct("qq")


@dataclass
class Target:
    """Where and how to send: everything about a server that does not change per request."""

    base_url: str
    backend: str
    model: str
    endpoint: str | None = None
    api_key: str | None = None
    ignore_eos: bool = True
    extra_body: dict | None = None
    timeout_s: float = 600.0
    save_text: bool = False
    connection: Connection = DEFAULT_CONNECTION  # credentials from the URL, TLS trust


@dataclass
class LiveCounters:
    """Plain ints the client updates; the progress display reads them on a timer."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    output_tokens: int = 0


class ClientError(Exception):
    """A problem with the target itself (bad URL, server unreachable, not SSE).

    Its message is one line naming the problem and what to change.
    """


@dataclass(frozen=True)
class Endpoint:
    """A parsed target URL: the address to connect to and the request-line prefix."""

    host: str
    port: int
    tls: bool
    path: str
    host_header: str

    @classmethod
    def parse(cls, base_url: str, endpoint: str) -> Endpoint:
        if "://" not in base_url:
            base_url = "http://" + base_url
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(
                f"base URL {base_url!r} is not an http(s) URL; give e.g. --base-url http://127.0.0.1:8000"
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ClientError(f"base URL {base_url!r} has an invalid port") from None
        if not endpoint.startswith("/"):
            endpoint = "/" + endpoint
        prefix = parts.path.rstrip("/")
        # "http://h:8000/v1" plus "/v1/completions" means "/v1/completions", not "/v1/v1/...".
        if prefix and (endpoint == prefix or endpoint.startswith(prefix + "/")):
            prefix = ""
        host = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        return cls(host, port, parts.scheme == "https", prefix + endpoint, host_header)


def request_head(ep: Endpoint, api_key: str | None, connection: Connection = DEFAULT_CONNECTION) -> bytes:
    """Everything of a request before the Content-Length value; built once per run."""
    lines = [
        f"POST {ep.path} HTTP/1.1",
        f"Host: {ep.host_header}",
        "User-Agent: loadgen",
        "Accept: text/event-stream",
        "Content-Type: application/json",
        "Connection: keep-alive",
    ]
    authorization = connection.authorization(api_key)
    if authorization:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


class _Conn(asyncio.Protocol):
    """One keep-alive connection and the state of the one request it carries.

    All per-request parsing state lives here (not in a separate object) so that the
    hot path touches one object's slots.
    """

    __slots__ = (
        "client", "transport", "closed", "rec", "fut", "timer", "phase", "got", "hbuf",
        "cbuf", "crem", "cskip", "ctrailer", "blen", "sse", "framer", "parse", "pstate",
        "counted", "last_ct", "texts", "errbody", "keep", "counters",
    )

    fast_path = True  # class-wide switch, for bench/bench_client.py's before/after figures

    def __init__(self, client: StreamClient) -> None:
        self.client = client
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
        self.cskip = 0
        self.ctrailer = False
        self.blen = 0
        self.sse = True
        self.pstate = None
        self.counted = 0
        self.last_ct: int | None = None
        # generated text is kept only when asked for (--save-text): per chunk it is a
        # string per stream, ~13 MB at 1,024 streams of 256 tokens
        self.texts: list[str] | None = [] if self.client.save_text else None
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
            self._give_back(_RETRY)
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
        if self.phase == _DONE and self.rec is not None:
            self._finish(None)

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
                    self.crem = 0
                    self._fail_close("malformed", f"bad chunk size line {line[:40]!r}")
                    return b""
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
                content, ct, pt, fin, text, err = parse(data, state)
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
                chunk_ns.append(t)
                chunk_tokens.append(k)
                if not text:
                    rec.invisible_tokens += k
                elif self.texts is not None:
                    self.texts.append(text)
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
                chunk_ns.append(t)
                chunk_tokens.append(ct - counted)
                rec.invisible_tokens += ct - counted
                counted = ct
            if ct is not None:
                self.last_ct = ct
            if pt is not None:
                rec.server_prompt_tokens = pt
            if fin is not None:
                rec.finish_reason = fin
        self.counted = counted
        if self.counters is not None and counted != before:
            self.counters.output_tokens += counted - before

    # -- request lifecycle -----------------------------------------------------

    def begin(self, rec: RequestRecord, fut: asyncio.Future, timeout_s: float) -> None:
        self._reset()
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


# Linux SO_TIMESTAMPING: the kernel stamps each received packet in software (on the
# receive path, before the packet waits in the socket) and recvmsg returns the stamp
# of the latest packet it read. Constants from <linux/net_tstamp.h>.
_SO_TIMESTAMPING = 37
_TIMESTAMPING_FLAGS = (1 << 3) | (1 << 4)  # SOF_TIMESTAMPING_RX_SOFTWARE | SOFTWARE
_ANCILLARY_BYTES = 128
_READ_BUFFER = bytearray(256 * 1024)  # shared: the loop is single-threaded and reads copy out at once
_READ_VIEW = memoryview(_READ_BUFFER)
_READ_BUFFERS = [_READ_BUFFER]
# Read streams through _StampedSocket where the platform allows (plain TCP on Linux).
KERNEL_STAMPS = True


class _NoKernelStamps(Exception):
    pass


class _StampedSocket:
    """A minimal transport: reads with ``recvmsg`` to get the kernel's receive stamp.

    Why: a stamp taken in ``data_received`` is late by however long the loop was busy
    before it got to this socket -- at 1,024 streams whose chunks all arrive within a
    few milliseconds, that is most of the ITL error. The kernel's stamp is taken when
    the packet arrived, whatever the loop was doing. It is CLOCK_REALTIME and is moved
    to the ``perf_counter_ns`` clock with the offset measured at that read (so clock
    adjustments during a run do not accumulate), and never later than the read itself.
    """

    __slots__ = ("sock", "conn", "loop", "fd", "closed")

    def __init__(self, sock: socket.socket, conn: _Conn, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.conn = conn
        self.loop = loop
        self.fd = sock.fileno()
        self.closed = False
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            # Into one preallocated buffer: recvmsg(n) would allocate n bytes per call,
            # and a large n means an mmap/munmap pair per read.
            n, anc, _flags, _addr = self.sock.recvmsg_into(_READ_BUFFERS, _ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        now = perf_counter_ns()
        if not n:
            self._lost(None)
            return
        data = _READ_VIEW[:n].tobytes()
        t = now
        if anc:
            level, kind, raw = anc[0]
            if kind == _SO_TIMESTAMPING and len(raw) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(raw)
                if sec:
                    k = sec * 1_000_000_000 + nsec - (time_ns() - perf_counter_ns())
                    if k < now:
                        t = k
        self.conn.received(data, t)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        if sent < len(data):  # a full socket buffer: rare for a request, hand the rest to the loop
            self.loop.create_task(self._send_rest(data[sent:]))

    async def _send_rest(self, rest: bytes) -> None:
        try:
            await self.loop.sock_sendall(self.sock, rest)
        except OSError as exc:
            self._lost(exc)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.loop.call_soon(self._lost, None)
            self._shut()

    def abort(self) -> None:
        self.close()

    def _shut(self) -> None:
        self.closed = True
        self.loop.remove_reader(self.fd)
        self.sock.close()

    def _lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self._shut()
        conn, self.conn = self.conn, None  # type: ignore[assignment]
        if conn is not None:
            conn.connection_lost(exc)


class StreamClient:
    """Sends streaming requests to one target and fills their records.

    Not thread-safe; one per event loop. ``limit`` only sizes expectations: the
    caller's concurrency gate is what bounds the number of open connections, since
    each in-flight request holds exactly one.
    """

    def __init__(
        self,
        target: Target,
        *,
        counters: LiveCounters | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        connect_timeout_s: float = 30.0,
        protocol: WireProtocol | None = None,
    ) -> None:
        self.target = target
        try:
            self.protocol = protocol or get_protocol(target.backend)
        except ValueError as exc:
            raise ClientError(str(exc)) from None
        self.endpoint = Endpoint.parse(target.base_url, target.endpoint or self.protocol.default_endpoint)
        self.head = request_head(self.endpoint, target.api_key, target.connection)
        self.secrets = secret_values(target.api_key, target.connection.basic_auth)
        self.counters = counters
        self.max_retries = max_retries
        self.timeout_s = target.timeout_s
        self.connect_timeout_s = min(connect_timeout_s, target.timeout_s)
        self.save_text = target.save_text
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Conn] = []
        self.all: set[_Conn] = set()
        # A server that closes every connection after a response while advertising
        # keep-alive (llama.cpp) makes each reuse a wasted write and a retry; after
        # enough of those, stop reusing and open a fresh connection per request.
        self.reuse = True
        self.reused = 0
        self.stale = 0
        self._ssl = target.connection.ssl_context() if self.endpoint.tls else None
        self._addr: tuple[int, Any] | None = None
        self.kernel_stamps = KERNEL_STAMPS and not self.endpoint.tls and sys.platform == "linux"

    def build_body(self, prompt: Any) -> bytes:
        t = self.target
        return self.protocol.build_body(prompt, t.model, ignore_eos=t.ignore_eos, extra_body=t.extra_body)

    async def _connect(self) -> _Conn:
        if self.kernel_stamps:
            try:
                conn = await asyncio.wait_for(self._connect_stamped(), self.connect_timeout_s)
            except _NoKernelStamps:
                self.kernel_stamps = False
            else:
                self.all.add(conn)
                return conn
        ep = self.endpoint
        _, conn = await asyncio.wait_for(
            self.loop.create_connection(
                lambda: _Conn(self), ep.host, ep.port, ssl=self._ssl,
                server_hostname=ep.host if self._ssl else None,
            ),
            self.connect_timeout_s,
        )
        self.all.add(conn)
        return conn  # type: ignore[return-value]

    async def _connect_stamped(self) -> _Conn:
        """A plain-TCP connection read through :class:`_StampedSocket`."""
        if self._addr is None:
            ep = self.endpoint
            infos = await self.loop.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
            if not infos:
                raise OSError(f"cannot resolve {ep.host}")
            self._addr = (infos[0][0], infos[0][4])
        family, addr = self._addr
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPING, _TIMESTAMPING_FLAGS)
            except OSError:
                raise _NoKernelStamps from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self.loop.sock_connect(sock, addr)
        except BaseException:
            sock.close()
            raise
        conn = _Conn(self)
        conn.transport = _StampedSocket(sock, conn, self.loop)  # type: ignore[assignment]
        return conn

    async def preconnect(self, n: int, batch: int = 64) -> int:
        """Open up to ``n`` keep-alive connections before the clock starts, so that the
        first wave of a run does not pay (and stamp through) a burst of TCP handshakes
        and accepts. Returns how many are open; failures are left for the run to
        report per request."""
        want = n - len(self.idle)
        while want > 0:
            size = min(batch, want)
            results = await asyncio.gather(*(self._connect() for _ in range(size)), return_exceptions=True)
            conns = [c for c in results if isinstance(c, _Conn)]
            self.idle.extend(conns)
            if len(conns) < size:
                break
            want -= size
        return len(self.idle)

    async def _acquire(self, fresh: bool) -> tuple[_Conn, bool]:
        """A connection, and whether it is a reused one."""
        idle = self.idle
        while idle and not fresh and self.reuse:
            conn = idle.pop()
            if not conn.closed:
                self.reused += 1
                return conn, True
            self.all.discard(conn)
        return await self._connect(), False

    async def request(self, rec: RequestRecord, body: bytes) -> RequestRecord:
        """Send one request and read its stream into ``rec``; never raises for
        server or network trouble (the record's ``error`` says what happened)."""
        counters = self.counters
        if counters is not None:
            counters.started += 1
            counters.in_flight += 1
        data = self.head + b"%d\r\n\r\n" % len(body) + body
        fresh = False
        conn: _Conn | None = None
        try:
            while True:
                try:
                    conn, reused = await self._acquire(fresh)
                except (TimeoutError, OSError) as exc:
                    rec.error = "connect"
                    ep = self.endpoint
                    rec.error_detail = (
                        cert_error_message(f"https://{ep.host_header}", exc) if is_cert_error(exc)
                        else f"cannot connect to {ep.host}:{ep.port}: {exc or type(exc).__name__}"
                    )
                    if not rec.sent_ns:
                        rec.sent_ns = perf_counter_ns()
                    break
                fut = self.loop.create_future()
                conn.begin(rec, fut, self.timeout_s)
                rec.sent_ns = perf_counter_ns()
                conn.transport.write(data)  # type: ignore[union-attr]
                result = await fut
                if result is not _RETRY:
                    break
                self.all.discard(conn)
                conn = None
                if reused:
                    self.stale += 1
                    if self.stale >= 8 and 2 * self.stale > self.reused:
                        self.reuse = False
                if rec.retries >= self.max_retries:
                    rec.error = "reset_before_first_byte"
                    rec.error_detail = (
                        f"connection closed before any response byte, {rec.retries + 1} attempts"
                    )
                    rec.last_ns = perf_counter_ns()
                    break
                rec.retries += 1
                fresh = True
        except asyncio.CancelledError:
            if conn is not None and conn.rec is rec:
                conn.cancel()
            elif rec.error is None:
                rec.error = "cancelled"
            raise
        finally:
            if counters is not None:
                counters.in_flight -= 1
                if rec.error is None:
                    counters.completed += 1
                else:
                    counters.failed += 1
        return rec

    async def close(self) -> None:
        for conn in list(self.all):
            if conn.transport is not None and not conn.closed:
                conn.transport.close()
        self.idle.clear()
        self.all.clear()
        await asyncio.sleep(0)


async def check_stream_async(target: Target, prompt: Any) -> RequestRecord:
    """Send one real streaming request; raise :class:`ClientError` unless it streamed.

    Catches before the clock starts what would otherwise fail every request of a run:
    a wrong endpoint or backend (404, or a JSON answer instead of SSE), a bad model
    name, a missing API key.
    """
    client = StreamClient(target)
    rec = RequestRecord(prompt_id=prompt.id, input_len=prompt.input_len, output_len=prompt.output_len)
    try:
        await client.request(rec, client.build_body(prompt))
    finally:
        await client.close()
    if rec.error is not None:
        url = f"{target.base_url.rstrip('/')} {client.endpoint.path}"
        raise ClientError(f"test request to {url} failed ({rec.error}): {rec.error_detail.splitlines()[0][:200] if rec.error_detail else 'no detail'}")
    return rec


def check_stream(target: Target, prompt: Any) -> RequestRecord:
    """Synchronous :func:`check_stream_async`."""
    return asyncio.run(check_stream_async(target, prompt))
