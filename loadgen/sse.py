"""Incremental server-sent-events framing over raw bytes.

The client receives a response body in arbitrary pieces: one read may hold half an
event, or thirty events. :class:`SSEFramer` keeps the unfinished tail between reads
and hands back the ``data`` payload of every event completed by the new bytes, still
as bytes, so that JSON is decoded once, by orjson, straight from the wire.

Only what a benchmark needs from the SSE grammar is kept: ``data:`` lines (several
per event are joined with ``\\n``), comment lines (``:`` keep-alives) and other fields
(``event:``, ``id:``, ``retry:``) are skipped, an event without data is not
dispatched. ``\\r\\n``, ``\\r`` and ``\\n`` line endings are all accepted. The common
case -- one ``data: {...}`` line per event, ``\\n`` endings -- takes a fast path that
does one ``split`` per read and one slice per event.
"""

from __future__ import annotations

DONE = b"[DONE]"


class SSEFramer:
    """Turns a byte stream into a sequence of event data payloads.

    Cheap enough to keep one per connection and :meth:`reset` it between responses.
    """

    __slots__ = ("pending", "_cr")

    def __init__(self) -> None:
        self.pending = b""  # the bytes of an event not yet terminated
        self._cr = False  # the previous piece ended with a bare b"\r"

    def reset(self) -> None:
        self.pending = b""
        self._cr = False

    @property
    def idle(self) -> bool:
        """Nothing buffered: the next byte starts a new event (the client's fast path)."""
        return not self.pending and not self._cr

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the data payload of each event they complete, in order."""
        if b"\r" in data or self._cr:
            data = self._normalise(data)
        buf = self.pending + data if self.pending else data
        if b"\n\n" not in buf:
            self.pending = buf
            return []
        parts = buf.split(b"\n\n")
        self.pending = parts.pop()
        out: list[bytes] = []
        for part in parts:
            if part[:6] == b"data: " and b"\n" not in part:
                out.append(part[6:])
            elif part:
                payload = _slow_event(part)
                if payload is not None:
                    out.append(payload)
        return out

    def _normalise(self, data: bytes) -> bytes:
        """Map CRLF and bare CR to LF; a read ending in CR is remembered so that an LF
        opening the next read is not taken for a second line end."""
        if self._cr:
            self._cr = False
            if data[:1] == b"\n":
                data = data[1:]  # the LF of a CRLF whose CR was already turned into LF
        self._cr = data[-1:] == b"\r"  # its LF, if any, comes with the next read
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _slow_event(block: bytes) -> bytes | None:
    """Parse one event block line by line (several data lines, comments, other fields)."""
    data_lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[:1] == b":":
            continue
        name, sep, value = line.partition(b":")
        if name != b"data":
            continue
        if not sep:
            value = b""
        elif value[:1] == b" ":
            value = value[1:]
        data_lines.append(value)
    if not data_lines:
        return None
    return b"\n".join(data_lines)


def parse_all(data: bytes) -> list[bytes]:
    """Frame a complete body in one go (tests, non-streaming checks)."""
    framer = SSEFramer()
    out = framer.feed(data)
    tail = framer.pending
    if tail.strip():
        out.extend(framer.feed(b"\n\n"))
    return out
