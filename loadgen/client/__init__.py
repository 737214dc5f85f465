"""The streaming hot path: send a request, read its stream, stamp every chunk.

Why not aiohttp's response reader: measured on this machine (docs/client.md), its
per-read machinery (StreamReader, flow control, one task wake-up per read) delays
reads enough at 1,024 streams to add tens of milliseconds to TTFT and to the ITL
tail, and it saturates far earlier. So the streaming requests go through a small
HTTP/1.1 client built directly on an ``asyncio.Protocol``, in layers:

* :mod:`~loadgen.client.target` -- ``Target``, the parsed ``Endpoint`` and the request
  head, built once per run;
* :mod:`~loadgen.client.http1` -- ``StreamConn``, the hot class: one keep-alive
  connection, its response framing and the SSE accounting of its request;
* :mod:`~loadgen.client.stamped` -- ``StampedSocket``, the kernel-stamped socket;
* :mod:`~loadgen.client.pool` -- ``StreamClient`` (the pool, retries) and
  ``check_stream``.

What they do together:

* every read is stamped before any parsing, and every event completed by that read
  shares the stamp. On Linux over plain TCP the stamp is the kernel's receive time of
  the packet (``SO_TIMESTAMPING``, read by ``StampedSocket`` with ``recvmsg``), so a
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

from loadgen.client.pool import (
    DEFAULT_MAX_RETRIES,
    LiveCounters,
    StreamClient,
    check_stream,
    check_stream_async,
)
from loadgen.client.target import ClientError, Endpoint, Target, request_head

__all__ = [
    "DEFAULT_MAX_RETRIES", "ClientError", "Endpoint", "LiveCounters", "StreamClient", "Target",
    "check_stream", "check_stream_async", "request_head",
]
