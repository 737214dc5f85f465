"""How much load one sim process sustains on one core.

    python perf/sim.py [--streams 2000] [--max-tokens 150] [--runs 3]

Starts the sim (fast profile) pinned to core 0 and a separate client process
pinned to core 1 that opens N concurrent streaming completions over raw
keep-alive HTTP/1.1 connections (an asyncio.Protocol on uvloop, so the client is
cheap and the sim is what is measured). Prints per run: streams completed,
content chunks received per second, and the sim's own step lateness (actual
start minus planned start of each engine step, from ``GET /sim/stats``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launcher import process  # noqa: E402


class StreamReader(asyncio.Protocol):
    """Counts SSE events of one streamed response; no parsing beyond that."""

    def __init__(self, request: bytes, done: asyncio.Future, stamps: list[float]) -> None:
        self.request = request
        self.done = done
        self.stamps = stamps
        self.events = 0
        self.tail = b""
        self.chunks = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        n = data.count(b"data: {")
        if n:
            self.chunks += n
            self.stamps.append(time.perf_counter())
        buf = self.tail + data
        if b"data: [DONE]" in buf and buf.endswith(b"0\r\n\r\n"):
            if not self.done.done():
                self.done.set_result(self.chunks)
            self.transport.close()
        self.tail = buf[-64:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(-1 if self.chunks == 0 else -self.chunks)


async def _reset_stats(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /sim/stats/reset HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await reader.read()
    writer.close()


async def client(port: int, streams: int, max_tokens: int) -> dict:
    loop = asyncio.get_running_loop()
    body = json.dumps({"model": "deepseek-r1", "prompt": "Benchmark the sim.", "max_tokens": max_tokens,
                       "ignore_eos": True, "stream": True}).encode()
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    stamps: list[float] = []
    futures = []
    t0 = time.perf_counter()
    for _ in range(streams):
        fut = loop.create_future()
        futures.append(fut)
        await loop.create_connection(lambda f=fut: StreamReader(request, f, stamps), "127.0.0.1", port)
    connected = time.perf_counter() - t0
    # steady state: every stream has its first tokens; measure the sim's lateness from here
    while len(stamps) < 2 * streams and not all(f.done() for f in futures):
        await asyncio.sleep(0.05)
    await _reset_stats(port)
    results = await asyncio.wait_for(asyncio.gather(*futures), timeout=600)
    t1 = time.perf_counter()
    chunks = sum(abs(r) for r in results)
    completed = sum(1 for r in results if r == max_tokens)
    stamps.sort()
    # steady window: drop the first and last 10% of arrivals (ramp-up and drain)
    lo, hi = stamps[len(stamps) // 10], stamps[len(stamps) * 9 // 10]
    in_window = len(stamps) * 8 // 10
    per_read = chunks / max(1, len(stamps))
    return {
        "streams": streams,
        "completed": completed,
        "chunks": chunks,
        "connect_s": round(connected, 3),
        "wall_s": round(t1 - t0, 3),
        "chunks_per_s_overall": round(chunks / (stamps[-1] - stamps[0]), 1),
        "chunks_per_s_steady": round(in_window * per_read / (hi - lo), 1),
    }


def _pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []


def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"sim exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("sim did not become healthy")


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc), to show the sim's headroom."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def one_run(args: argparse.Namespace) -> dict:
    port = process.free_port()
    sim = subprocess.Popen(
        [*_pin(0), sys.executable, "-m", "launcher.sim", "--host", "127.0.0.1", "--port", str(port),
         "--profile", args.profile, *args.sim_args],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_health(base, sim)
        out = subprocess.run(
            [*_pin(1), sys.executable, __file__, "--client", str(port), "--streams", str(args.streams),
             "--max-tokens", str(args.max_tokens)],
            capture_output=True, text=True, timeout=900, cwd=REPO,
        )
        if out.returncode != 0:
            raise SystemExit(f"client failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
        result = json.loads(out.stdout)
        with urllib.request.urlopen(base + "/sim/stats", timeout=10) as r:
            stats = json.loads(r.read())
        result["sim_cpu_s"] = round(_cpu_seconds(sim.pid), 2)
        result["sim_cpu_share"] = round(result["sim_cpu_s"] / result["wall_s"], 2)
        result["step_lateness_ms"] = {k: round(v, 3) for k, v in stats["step_lateness_ms"].items()}
        result["steps_measured"] = stats["steps_since_reset"]
        return result
    finally:
        process.stop_tree(sim.pid, sim.pid, timeout_s=10, popen=sim)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=150)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", default="fast")
    ap.add_argument("--sim-arg", dest="sim_args", action="append", default=[],
                    help="extra sim option (repeatable), e.g. --sim-arg=--tokens-per-chunk --sim-arg=2")
    ap.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        import uvloop

        print(json.dumps(uvloop.run(client(args.client, args.streams, args.max_tokens))))
        return 0
    runs = []
    for i in range(args.runs):
        r = one_run(args)
        runs.append(r)
        print(f"run {i + 1}: {json.dumps(r)}", flush=True)
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    print(
        f"median of {len(runs)} runs: {args.streams} concurrent streams, completed {med('completed'):.0f}, "
        f"{med('chunks_per_s_steady'):.0f} chunks/s steady ({med('chunks_per_s_overall'):.0f} overall), "
        f"step lateness p50 {statistics.median(r['step_lateness_ms']['p50'] for r in runs):.3f} ms, "
        f"p99 {statistics.median(r['step_lateness_ms']['p99'] for r in runs):.3f} ms (steady state), "
        f"sim CPU {statistics.median(r['sim_cpu_share'] for r in runs):.0%} of one core"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
