"""SSE framing over raw bytes, fed the way a socket delivers them: in arbitrary pieces."""

from __future__ import annotations

import pytest

from loadgen.sse import SSEFramer, parse_all

STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"a": 1}\n\n'
    b"event: message\nid: 7\ndata: line one\ndata: line two\n\n"
    b"retry: 100\n\n"
    b"data:no-space\n\n"
    b"data\n\n"
    b'data: {"b": 2}\n\n'
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a": 1}', b"line one\nline two", b"no-space", b"", b'{"b": 2}', b"[DONE]"]


def feed_pieces(pieces: list[bytes]) -> list[bytes]:
    framer = SSEFramer()
    out: list[bytes] = []
    for piece in pieces:
        out.extend(framer.feed(piece))
    return out


def test_whole_stream_in_one_read() -> None:
    assert feed_pieces([STREAM]) == EXPECTED


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
def test_other_line_endings_split_at_every_byte(ending: bytes) -> None:
    stream = STREAM.replace(b"\n", ending)
    for cut in range(1, len(stream)):
        assert feed_pieces([stream[:cut], stream[cut:]]) == EXPECTED, cut


def test_split_at_every_byte_position() -> None:
    for cut in range(1, len(STREAM)):
        assert feed_pieces([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


def test_one_byte_at_a_time() -> None:
    assert feed_pieces([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_crlf_split_between_cr_and_lf_does_not_make_an_extra_event() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: x\r") == []
    assert framer.feed(b"\n\r") == [b"x"]
    assert framer.feed(b"\ndata: y\r\n\r\n") == [b"y"]


def test_unterminated_event_waits_and_is_pending() -> None:
    framer = SSEFramer()
    assert framer.feed(b'data: {"partial": tr') == []
    assert framer.pending == b'data: {"partial": tr'
    assert framer.feed(b"ue}\n\n") == [b'{"partial": true}']
    assert framer.pending == b""


def test_reset_drops_leftovers() -> None:
    framer = SSEFramer()
    framer.feed(b"data: left over")
    framer.reset()
    assert framer.feed(b"data: fresh\n\n") == [b"fresh"]


def test_parse_all_flushes_a_final_unterminated_event() -> None:
    assert parse_all(b"data: 1\n\ndata: 2") == [b"1", b"2"]


def test_many_events_in_one_read_keep_order() -> None:
    body = b"".join(b"data: %d\n\n" % i for i in range(500))
    assert feed_pieces([body]) == [b"%d" % i for i in range(500)]
