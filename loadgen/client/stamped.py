"""The kernel-stamped socket: a minimal transport that reads with ``recvmsg``.

Used for plain TCP on Linux (on by default, ``StreamClient(kernel_stamps=False)`` turns
it off); elsewhere, and where the option is refused, the pool falls back to uvloop's
transport and :class:`~loadgen.client.http1.StreamConn` stamps in ``data_received``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from time import perf_counter_ns, time_ns
from typing import TYPE_CHECKING, Any

from loadgen.errors import LoadgenError

if TYPE_CHECKING:
    from loadgen.client.http1 import StreamConn

# Linux SO_TIMESTAMPING: the kernel stamps each received packet in software (on the
# receive path, before the packet waits in the socket) and recvmsg returns the stamp
# of the latest packet it read. Constants from <linux/net_tstamp.h>.
_SO_TIMESTAMPING = 37
_TIMESTAMPING_FLAGS = (1 << 3) | (1 << 4)  # SOF_TIMESTAMPING_RX_SOFTWARE | SOFTWARE
_ANCILLARY_BYTES = 128
_READ_BUFFER = bytearray(256 * 1024)  # shared: the loop is single-threaded and reads copy out at once
_READ_VIEW = memoryview(_READ_BUFFER)
_READ_BUFFERS = [_READ_BUFFER]
_TIMESPEC = struct.Struct("qq")


class NoKernelStamps(LoadgenError):
    """The system refused ``SO_TIMESTAMPING``: use the ordinary transport instead."""


def kernel_stamps_available(tls: bool) -> bool:
    """Whether to try the stamped socket at all: plain TCP, on Linux."""
    return not tls and sys.platform == "linux"


async def open_stamped(loop: asyncio.AbstractEventLoop, family: int, addr: Any) -> socket.socket:
    """A connected non-blocking TCP socket with kernel receive stamps switched on.

    Raises :class:`NoKernelStamps` if the option is refused, ``OSError`` if the
    connection cannot be opened.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPING, _TIMESTAMPING_FLAGS)
        except OSError:
            raise NoKernelStamps from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


class StampedSocket:
    """A minimal transport: reads with ``recvmsg`` to get the kernel's receive stamp.

    Why: a stamp taken in ``data_received`` is late by however long the loop was busy
    before it got to this socket -- at 1,024 streams whose chunks all arrive within a
    few milliseconds, that is most of the ITL error. The kernel's stamp is taken when
    the packet arrived, whatever the loop was doing. It is CLOCK_REALTIME and is moved
    to the ``perf_counter_ns`` clock with the offset measured at that read (so clock
    adjustments during a run do not accumulate), and never later than the read itself.
    """

    __slots__ = ("sock", "conn", "loop", "fd", "closed")

    def __init__(self, sock: socket.socket, conn: StreamConn, loop: asyncio.AbstractEventLoop) -> None:
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
