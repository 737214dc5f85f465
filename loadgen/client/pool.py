"""The stream pool: sends streaming requests to one target over keep-alive connections.

A request whose connection dies before any response byte arrived (a stale keep-alive
connection, e.g. llama.cpp closes after every stream) is retried on a fresh
connection and the retry counted in ``RequestRecord.retries``. The pool never holds
more connections than requests in flight (the runner's concurrency gate sizes it).
"""

from __future__ import annotations

import asyncio
import socket
from time import perf_counter_ns
from typing import Any

from loadgen.client.http1 import RETRY, LiveCounters, StreamConn
from loadgen.client.stamped import NoKernelStamps, StampedSocket, kernel_stamps_available, open_stamped
from loadgen.client.target import ClientError, Endpoint, Target, request_head
from loadgen.connection import cert_error_message, is_cert_error
from loadgen.protocols import get_protocol
from loadgen.protocols.base import WireProtocol
from loadgen.records import RequestRecord
from loadgen.redaction import secret_values

DEFAULT_MAX_RETRIES = 2


class StreamClient:
    """Sends streaming requests to one target and fills their records.

    Not thread-safe; one per event loop. The caller's concurrency gate is what bounds
    the number of open connections, since each in-flight request holds exactly one.

    ``kernel_stamps`` (read plain-TCP streams through :class:`StampedSocket`, where the
    platform allows) and ``fast_path`` (the one-chunk-one-event shortcut of
    :class:`StreamConn`) are on in the product; ``perf/client.py`` and
    ``perf/client_parse.py`` turn each off to show what it buys.
    """

    def __init__(
        self,
        target: Target,
        *,
        counters: LiveCounters | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        connect_timeout_s: float = 30.0,
        protocol: WireProtocol | None = None,
        kernel_stamps: bool = True,
        fast_path: bool = True,
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
        self.idle: list[StreamConn] = []
        self.all: set[StreamConn] = set()
        # A server that closes every connection after a response while advertising
        # keep-alive (llama.cpp) makes each reuse a wasted write and a retry; after
        # enough of those, stop reusing and open a fresh connection per request.
        self.reuse = True
        self.reused = 0
        self.stale = 0
        self._ssl = target.connection.ssl_context() if self.endpoint.tls else None
        self._addr: tuple[int, Any] | None = None
        self.kernel_stamps = kernel_stamps and kernel_stamps_available(self.endpoint.tls)
        self.fast_path = fast_path

    def build_body(self, prompt: Any) -> bytes:
        t = self.target
        return self.protocol.build_body(prompt, t.model, ignore_eos=t.ignore_eos, extra_body=t.extra_body)

    async def _connect(self) -> StreamConn:
        if self.kernel_stamps:
            try:
                conn = await asyncio.wait_for(self._connect_stamped(), self.connect_timeout_s)
            except NoKernelStamps:
                self.kernel_stamps = False
            else:
                self.all.add(conn)
                return conn
        ep = self.endpoint
        _, conn = await asyncio.wait_for(
            self.loop.create_connection(
                lambda: StreamConn(self), ep.host, ep.port, ssl=self._ssl,
                server_hostname=ep.host if self._ssl else None,
            ),
            self.connect_timeout_s,
        )
        self.all.add(conn)
        return conn  # type: ignore[return-value]

    async def _connect_stamped(self) -> StreamConn:
        """A plain-TCP connection read through :class:`StampedSocket`."""
        if self._addr is None:
            ep = self.endpoint
            infos = await self.loop.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
            if not infos:
                raise OSError(f"cannot resolve {ep.host}")
            self._addr = (infos[0][0], infos[0][4])
        sock = await open_stamped(self.loop, *self._addr)
        conn = StreamConn(self)
        conn.transport = StampedSocket(sock, conn, self.loop)  # type: ignore[assignment]
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
            conns = [c for c in results if isinstance(c, StreamConn)]
            self.idle.extend(conns)
            if len(conns) < size:
                break
            want -= size
        return len(self.idle)

    async def _acquire(self, fresh: bool) -> tuple[StreamConn, bool]:
        """A connection, and whether it is a reused one."""
        idle = self.idle
        while idle and not fresh and self.reuse:
            conn = idle.pop()
            if not conn.closed:
                self.reused += 1
                return conn, True
            self.all.discard(conn)
        return await self._connect(), False

    async def request(self, rec: RequestRecord, body: bytes, head: bytes | None = None) -> RequestRecord:
        """Send one request and read its stream into ``rec``; never raises for
        server or network trouble (the record's ``error`` says what happened).
        ``head``: a request head of its own (a session's header), else the client's."""
        counters = self.counters
        if counters is not None:
            counters.started += 1
            counters.in_flight += 1
        data = (head or self.head) + b"%d\r\n\r\n" % len(body) + body
        fresh = False
        conn: StreamConn | None = None
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
                if result is not RETRY:
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
        raise ClientError(f"test request to {url} failed ({rec.error}): {rec.error_detail.splitlines()[0][:200] if rec.error_detail else 'no detail'}",
                          kind=rec.error)
    return rec


def check_stream(target: Target, prompt: Any) -> RequestRecord:
    """Synchronous :func:`check_stream_async`."""
    return asyncio.run(check_stream_async(target, prompt))
