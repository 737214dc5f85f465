"""How much does the client distort what it measures, and how fast can it read?

Starts ``tests/servers/stream_server.py`` pinned to one core, pins itself to another, and runs:

* ``accuracy``: the server sends the first token after exactly ``--ttft-ms`` and then
  one token every ``--itl-ms``; for each concurrency, 2x as many prompts as streams.
  Reported figures are compared with the server's own log of when it wrote each
  chunk (both sides stamp CLOCK_MONOTONIC through ``perf_counter_ns``), so each
  error is "client says" minus "server did".
* ``saturation``: the server writes whole responses at once (``--ttft-ms 0
  --itl-ms 0``); the figure is content chunks consumed per second with full
  measurement (every chunk stamped and counted).

Each implementation runs in turn within each repeat so that they share the
machine's noise; medians over ``--repeat`` runs are printed last:

* ``raw``: loadgen as shipped (Protocol-level reader, through loadgen.runner, finished requests
  reduced in slices into the aggregates and the per-request store during the run);
* ``raw-nosink``: raw keeping every record in memory and reducing nothing during the run;
* ``aiohttp``: the same measurement through aiohttp's response API;
* ``raw-gc``: raw without pausing the garbage collector during the run;
* ``raw-noconn``: raw without opening the first wave's connections up front;
* ``raw-noslice``: raw without the one-chunk-one-event fast path in data_received;
* ``raw-nokts``: raw stamping in ``data_received`` instead of using the kernel's
  receive stamps (uvloop's transport instead of loadgen's ``recvmsg`` reader).
* ``raw-scrape``: raw while loadgen's telemetry thread scrapes a recorded vLLM
  ``/metrics`` page every ``--metrics-interval`` s (served from the server's core), as
  every loadgen run does: its figures should match ``raw``'s.

    python perf/client.py accuracy --concurrency 1,64,256,1024 --repeat 3
    python perf/client.py saturation --streams 64,512 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from loadgen import runner  # noqa: E402
from loadgen.aggregate import Aggregate  # noqa: E402
from loadgen.collect import PointCollector  # noqa: E402
from loadgen.records import Prompt, RequestRecord  # noqa: E402
from loadgen.runner import Target  # noqa: E402
from loadgen.store import RequestStore, StoreFiles  # noqa: E402
from tests.servers.stream_server import spawn  # noqa: E402

# raw: the product as shipped. The raw-* variants each switch one optimisation off.
IMPLS = ("raw", "aiohttp", "raw-gc", "raw-noconn", "raw-noslice", "raw-nokts", "raw-scrape", "raw-nosink")
METRICS_URL: str | None = None  # set in main() when raw-scrape runs
METRICS_INTERVAL_S = 1.0


NICE: int | None = None  # --nice: scheduling priority for the server and this process


def http_json(port: int, path: str, method: str = "GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


class _Tee(PointCollector):
    """The product's sink (aggregates and a per-request store, reduced in slices during the
    run), which also keeps every record so that the benchmark can compare it with the truth."""

    def __init__(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="bench-client-"))
        super().__init__(Aggregate(), RequestStore(StoreFiles(folder / "r.npy", None, folder / "r.details.jsonl")))
        self.kept: list[RequestRecord] = []

    def push(self, rec: RequestRecord) -> None:
        self.kept.append(rec)
        super().push(rec)


def run_impl(impl: str, target: Target, prompts: list[Prompt], concurrency: int
             ) -> tuple[list[RequestRecord], int, int, list[int]]:
    import uvloop

    if impl.startswith("raw"):
        scraper = None
        if impl == "raw-scrape":
            from loadgen.telemetry.scrape import Fetcher, Scraper

            scraper = Scraper(Fetcher(METRICS_URL, 5.0).get, None, METRICS_INTERVAL_S, None)
            scraper.scrape(full=True)
            scraper.start()
        sink = None if impl == "raw-nosink" else _Tee()
        try:
            out = runner.run(target, prompts, None, concurrency=concurrency, sink=sink,
                             freeze_gc=impl != "raw-gc", preconnect=impl != "raw-noconn",
                             kernel_stamps=impl != "raw-nokts", fast_path=impl != "raw-noslice")
        finally:
            if scraper is not None:
                scraper.stop()
                print(f"  (scraper: {scraper.log.thread_ticks} scrapes, {scraper.log.errors} failed, "
                      f"thread CPU {scraper.log.thread_cpu_s * 1000:.1f} ms)", flush=True)
        return (sink.kept if sink is not None else out.records), out.start_ns, out.end_ns, out.lag_samples_ns
    from client_aiohttp import run_aiohttp

    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            return r.run(run_aiohttp(target, prompts, concurrency))
    finally:
        gc.enable()
        gc.unfreeze()


def pct(a, q: float) -> float:
    return float(np.percentile(np.asarray(a, dtype=np.float64), q)) if len(a) else float("nan")


def client_figures(records: list[RequestRecord]) -> dict[str, list[float]]:
    """TTFT, TPOT and split ITL (ms) by the metrics contract's definitions."""
    ttft, tpot, itl = [], [], []
    for r in records:
        if r.error or not r.chunk_ns:
            continue
        ttft.append((r.first_ns - r.sent_ns) / 1e6)
        if r.output_tokens > 1:
            tpot.append((r.last_ns - r.first_ns) / 1e6 / (r.output_tokens - 1))
        for j in range(1, len(r.chunk_ns)):
            k = r.chunk_tokens[j] or 1
            gap = (r.chunk_ns[j] - r.chunk_ns[j - 1]) / 1e6 / k
            itl.extend([gap] * k)
    return {"ttft": ttft, "tpot": tpot, "itl": itl}


def truth_figures(truth: list[dict]) -> dict[str, list[float]]:
    ttft, tpot, itl = [], [], []
    for t in truth:
        s = t["send_ns"]
        if not s:
            continue
        ttft.append((s[0] - t["recv_ns"]) / 1e6)
        if len(s) > 1:
            tpot.append((s[-1] - s[0]) / 1e6 / (len(s) - 1))
            itl.extend(np.diff(np.asarray(s, dtype=np.float64)) / 1e6)
    return {"ttft": ttft, "tpot": tpot, "itl": itl}


def delivery_delays(records: list[RequestRecord], truth: list[dict]) -> list[float]:
    """Per chunk: client stamp minus server write stamp (ms), matched by request id."""
    by_id = {t["id"]: t["send_ns"] for t in truth}
    out: list[float] = []
    for r in records:
        sends = by_id.get(r.prompt_id)
        if not sends or r.error:
            continue
        n = min(len(sends), len(r.chunk_ns))
        out.extend((np.asarray(r.chunk_ns[:n]) - np.asarray(sends[:n])) / 1e6)
    return out


def ttft_split(records: list[RequestRecord], truth: list[dict]) -> tuple[float, float]:
    """Mean ms of (server arrival - client send) and (client first stamp - server first
    write): where a TTFT error comes from, the way there or the way back."""
    by_id = {t["id"]: t for t in truth}
    there, back = [], []
    for r in records:
        t = by_id.get(r.prompt_id)
        if r.error or not t or not t["send_ns"] or not r.first_ns:
            continue
        there.append((t["recv_ns"] - r.sent_ns) / 1e6)
        back.append((r.first_ns - t["send_ns"][0]) / 1e6)
    return (statistics.fmean(there) if there else float("nan"), statistics.fmean(back) if back else float("nan"))


def accuracy(args: argparse.Namespace) -> list[dict]:
    rows = []
    srv = ["--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms), "--tokens", str(args.tokens)]
    with spawn(*srv, cpu=args.server_cpu, nice=NICE) as port:
        target = Target(f"http://127.0.0.1:{port}", "vllm", "stream-test", timeout_s=120)
        for rep in range(args.repeat):
            for conc in args.concurrency:
                for impl in args.impl:
                    http_json(port, "/reset", "POST")
                    prompts = [Prompt(i, 4, args.tokens, text=f"id={i} bench prompt") for i in range(2 * conc)]
                    t0 = os.times()
                    records, start, end, lag = run_impl(impl, target, prompts, conc)
                    t1 = os.times()
                    cpu = (t1.user - t0.user) + (t1.system - t0.system)
                    sys_share = (t1.system - t0.system) / cpu if cpu > 0 else 0.0
                    truth = http_json(port, "/truth")
                    stats = http_json(port, "/stats")
                    c, s = client_figures(records), truth_figures(truth)
                    delay = delivery_delays(records, truth)
                    there, back = ttft_split(records, truth)
                    row = {
                        "mode": "accuracy", "impl": impl, "concurrency": conc, "repeat": rep,
                        "errors": sum(1 for r in records if r.error),
                        "ttft_mean_err": statistics.fmean(c["ttft"]) - statistics.fmean(s["ttft"]),
                        "ttft_p99_err": pct(c["ttft"], 99) - pct(s["ttft"], 99),
                        "tpot_mean_err": statistics.fmean(c["tpot"]) - statistics.fmean(s["tpot"]),
                        "itl_p99_err": pct(c["itl"], 99) - pct(s["itl"], 99),
                        "ttft_mean": statistics.fmean(c["ttft"]), "ttft_true": statistics.fmean(s["ttft"]),
                        "itl_p99": pct(c["itl"], 99), "itl_p99_true": pct(s["itl"], 99),
                        "delay_p50": pct(delay, 50), "delay_p99": pct(delay, 99),
                        "send_to_server": there, "first_chunk_delay": back,
                        "lag_p99": pct(lag, 99) / 1e6, "lag_max": (max(lag) / 1e6 if lag else 0.0),
                        "max_in_flight": stats["max_in_flight"], "wall_s": (end - start) / 1e9,
                        "client_cpu_us_per_chunk": cpu * 1e6 / max(1, sum(len(r.chunk_ns) for r in records)),
                        "client_cpu_kernel_share": sys_share,
                    }
                    rows.append(row)
                    print(f"accuracy {impl:8s} c={conc:5d} rep={rep} err={row['errors']} "
                          f"TTFT mean {row['ttft_mean']:.1f} (true {row['ttft_true']:.1f}) err {row['ttft_mean_err']:+.2f} "
                          f"p99err {row['ttft_p99_err']:+.2f} | TPOT err {row['tpot_mean_err']:+.3f} | "
                          f"ITL p99 {row['itl_p99']:.2f} (true {row['itl_p99_true']:.2f}) err {row['itl_p99_err']:+.3f} | "
                          f"delay p50/p99 {row['delay_p50']:.2f}/{row['delay_p99']:.2f} | "
                          f"TTFT err = send {there:+.1f} + first read {back:+.1f} | lag p99 {row['lag_p99']:.1f} ms | "
                          f"client CPU {row['client_cpu_us_per_chunk']:.1f} us/chunk ({sys_share:.0%} in the kernel)",
                          flush=True)
    return rows


def saturation(args: argparse.Namespace) -> list[dict]:
    rows = []
    srv = ["--ttft-ms", "0", "--itl-ms", "0", "--tokens", str(args.tokens), "--no-truth"]
    with spawn(*srv, cpu=args.server_cpu, nice=NICE) as port:
        target = Target(f"http://127.0.0.1:{port}", "vllm", "stream-test", timeout_s=120)
        for rep in range(args.repeat):
            for streams in args.streams:
                for impl in args.impl:
                    n = streams * args.requests_per_stream
                    prompts = [Prompt(i, 4, args.tokens, text=f"id={i} x") for i in range(n)]
                    cpu0 = time.process_time()
                    records, start, end, lag = run_impl(impl, target, prompts, streams)
                    cpu = time.process_time() - cpu0
                    chunks = sum(len(r.chunk_ns) for r in records)
                    errors = sum(1 for r in records if r.error)
                    rate = chunks / ((end - start) / 1e9)
                    rows.append({"mode": "saturation", "impl": impl, "streams": streams, "repeat": rep,
                                 "chunks": chunks, "errors": errors, "chunks_per_s": rate,
                                 "chunks_per_cpu_s": chunks / cpu if cpu > 0 else float("nan"),
                                 "lag_p99": pct(lag, 99) / 1e6})
                    print(f"saturation {impl:8s} streams={streams:4d} rep={rep} chunks={chunks} err={errors} "
                          f"-> {rate / 1000:.0f}k chunks/s wall, {chunks / max(cpu, 1e-9) / 1000:.0f}k per client CPU-second "
                          f"(lag p99 {pct(lag, 99) / 1e6:.1f} ms)", flush=True)
    return rows


def summarise(rows: list[dict]) -> None:
    print("\nmedians:")
    keys: dict[tuple, list[dict]] = {}
    for r in rows:
        keys.setdefault((r["mode"], r["impl"], r.get("concurrency", r.get("streams"))), []).append(r)
    for (mode, impl, n), group in keys.items():
        def med(k: str, group: list[dict] = group) -> float:
            return statistics.median(g[k] for g in group)

        if mode == "accuracy":
            print(f"  accuracy   {impl:8s} c={n:5d}: TTFT mean err {med('ttft_mean_err'):+.2f} ms, "
                  f"TTFT p99 err {med('ttft_p99_err'):+.2f} ms, TPOT mean err {med('tpot_mean_err'):+.3f} ms, "
                  f"ITL p99 err {med('itl_p99_err'):+.3f} ms, chunk delay p99 {med('delay_p99'):.2f} ms, "
                  f"TTFT err = send {med('send_to_server'):+.1f} + first read {med('first_chunk_delay'):+.1f} ms, "
                  f"lag p99 {med('lag_p99'):.1f} ms, client CPU {med('client_cpu_us_per_chunk'):.1f} us/chunk "
                  f"({len(group)} runs)")
        else:
            print(f"  saturation {impl:8s} streams={n:4d}: {med('chunks_per_s') / 1000:.0f}k chunks/s wall, "
                  f"{med('chunks_per_cpu_s') / 1000:.0f}k chunks per client CPU-second ({len(group)} runs)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("accuracy", "saturation"))
    ap.add_argument("--impl", default="raw,aiohttp", help=f"comma list of {', '.join(IMPLS)}")
    ap.add_argument("--concurrency", default="1,64,256,1024")
    ap.add_argument("--streams", default="64,512")
    ap.add_argument("--requests-per-stream", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--ttft-ms", type=float, default=100.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    ap.add_argument("--metrics-interval", type=float, default=1.0, help="raw-scrape: seconds between scrapes")
    ap.add_argument("--nice", type=int, default=None,
                    help="run server and client at this nice value (negative needs root): on a shared "
                         "machine, keeps other processes from taking the client's core in mid-stream")
    args = ap.parse_args()
    global NICE
    NICE = args.nice
    if NICE is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, NICE)
        except PermissionError:
            ap.error(f"--nice {NICE}: not permitted for this user; drop the option or use a value >= 0")
    args.impl = [s.strip() for s in args.impl.split(",") if s.strip()]
    bad = [i for i in args.impl if i not in IMPLS]
    if bad:
        ap.error(f"unknown --impl {', '.join(bad)}; choose from {', '.join(IMPLS)}")
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.streams = [int(x) for x in args.streams.split(",")]
    ncpu = os.cpu_count() or 1
    if args.server_cpu >= ncpu or args.client_cpu >= ncpu:
        args.server_cpu = None
        print(f"only {ncpu} CPU(s): not pinning", file=sys.stderr)
    else:
        os.sched_setaffinity(0, {args.client_cpu})
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    except (ValueError, OSError):
        pass
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        if "raw-scrape" in args.impl:
            from telemetry import page_server

            global METRICS_URL, METRICS_INTERVAL_S
            METRICS_URL = stack.enter_context(page_server(cpu=args.server_cpu))
            METRICS_INTERVAL_S = args.metrics_interval
        rows = accuracy(args) if args.mode == "accuracy" else saturation(args)
    summarise(rows)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
