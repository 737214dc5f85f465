"""CPU cost of the client's per-read work alone, without sockets.

Replays a recorded 256-token vLLM-style response into the client's connection
protocol (``data_received``), split the way a socket delivers it, and reports
chunks per CPU-second (``time.process_time``, so other processes on the machine do
not count). This isolates the Python work loadgen controls -- HTTP de-chunking, SSE
framing, JSON decoding, stamping -- from the kernel and uvloop costs that
perf/client.py includes.

    python perf/client_parse.py              # both read shapes, fast path on and off
    python perf/client_parse.py --reps 2000
    python perf/client_parse.py --kind chat-reasoning   # chat; the first half streamed as reasoning

Read shapes: ``one-chunk`` (a read per HTTP chunk: streaming with ITL > 0) and
``64k`` (whole responses in 64 KiB reads: saturation).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from loadgen.client import StreamClient, Target  # noqa: E402
from loadgen.client.http1 import StreamConn  # noqa: E402
from loadgen.records import RequestRecord  # noqa: E402
from tests.servers.stream_server import Renderer, _chunk  # noqa: E402

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


KINDS = {"completions": "vllm", "chat": "openai-chat", "chat-reasoning": "openai-chat"}


def response_pieces(tokens: int, kind: str = "completions") -> list[bytes]:
    r = Renderer("completions" if kind == "completions" else "chat", "stream-test", 4, True)
    parts = [HEAD]
    role = r.role()
    if role:
        parts.append(_chunk(role))
    for i in range(tokens):
        event = r.token(i, 1, i == tokens - 1)
        if kind == "chat-reasoning" and i < tokens // 2:
            event = event.replace(b'"delta":{"content"', b'"delta":{"reasoning_content"')
        parts.append(_chunk(event))
    parts.append(_chunk(r.tail(tokens)) + b"0\r\n\r\n")
    return parts


async def measure(reads: list[bytes], tokens: int, reps: int, fast_path: bool, backend: str = "vllm") -> float:
    client = StreamClient(Target("http://127.0.0.1:9", backend, "stream-test"), fast_path=fast_path)
    conn = StreamConn(client)
    conn.transport = _NullTransport()  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    t0 = time.process_time()
    for _ in range(reps):
        rec = RequestRecord(0, 4, tokens)
        conn.begin(rec, loop.create_future(), 600.0)
        for data in reads:
            conn.data_received(data)
        if rec.error or len(rec.chunk_ns) != tokens:
            raise RuntimeError(f"replay failed: {rec.error} {rec.error_detail}")
        client.idle.clear()
    return reps * tokens / (time.process_time() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=800)
    ap.add_argument("--kind", choices=list(KINDS), default="completions",
                    help="vLLM completions events, chat events, or chat whose first half is reasoning")
    ap.add_argument("--shape", choices=("one-chunk", "64k"), default=None, help="one read shape only")
    ap.add_argument("--fast-path", choices=("on", "off", "both"), default="both")
    args = ap.parse_args()
    parts = response_pieces(args.tokens, args.kind)
    whole = b"".join(parts)
    shapes = {
        "one-chunk": parts,
        "64k": [whole[i : i + 65536] for i in range(0, len(whole), 65536)],
    }
    fasts = {"on": (True,), "off": (False,), "both": (True, False)}[args.fast_path]
    for name, reads in shapes.items():
        if args.shape not in (None, name):
            continue
        for fast in fasts:
            rate = asyncio.run(measure(reads, args.tokens, args.reps, fast, KINDS[args.kind]))
            print(f"{name:9s} fast path {'on ' if fast else 'off'}: {rate / 1000:6.0f}k chunks per CPU-second "
                  f"({1e6 / rate:.2f} us/chunk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
