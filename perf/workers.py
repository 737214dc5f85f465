"""What do worker processes and Ray actors cost, and do they keep the client exact?

Against ``tests/servers/stream_server.py`` (the exact-timing server of ``perf/client.py``):

* ``cpu``: the server writes whole responses at once, so the client is what saturates;
  client CPU per content chunk (user + system, parent and workers) with the point in
  one process (``inproc``, the default path), one forked worker (``w1``) and two
  (``w2``), plus each worker's own CPU per chunk. From it: the chunks/s one worker
  sustains on one core, hence what N workers sustain on an N+1-core machine (one core
  left to the parent, the kernel's network work and the rest).
* ``accuracy``: first token after ``--ttft-ms``, one token every ``--itl-ms``; client
  TTFT mean and ITL p99 (from the merged aggregate, as the result JSON reports them)
  minus the server's own log of when it wrote each chunk.
* ``launch``: the real ``loadgen`` command, from launch to the first measured request
  arriving at the server (CLOCK_MONOTONIC on both sides), with the prompt set cached:
  one process, ``--workers 2``, and ``--ray-address`` on a local one-node Ray cluster
  that this script starts and stops (``--ray``).

    python perf/workers.py cpu --streams 256 --repeat 3
    python perf/workers.py accuracy --concurrency 1024 --repeat 3
    python perf/workers.py launch --repeat 3 --ray

This machine may be shared: the load average is printed with every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from client import http_json, pct, truth_figures  # noqa: E402

from loadgen.aggregate import Aggregate  # noqa: E402
from loadgen.collect import PointCollector  # noqa: E402
from loadgen.config import RunConfig  # noqa: E402
from loadgen.metrics import SATURATION_LAG_P99_MS  # noqa: E402
from loadgen.records import Prompt  # noqa: E402
from loadgen.runner import Target, run  # noqa: E402
from loadgen.scale import procpool  # noqa: E402
from loadgen.scale.merge import merge_outcomes  # noqa: E402
from loadgen.scale.split import plan_tasks  # noqa: E402
from loadgen.scale.worker import SummedCounters, aggregate_from_wire  # noqa: E402
from loadgen.store import RequestStore, StoreFiles  # noqa: E402
from tests.servers.stream_server import spawn  # noqa: E402

MODES = ("inproc", "w1", "w2")


def load() -> str:
    return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_mode(mode: str, target: Target, prompts: list[Prompt], conc: int, folder: Path):
    """One point; returns (aggregate, client CPU s, per-worker [(cpu_s, chunks)], lag p99 ms)."""
    store = StoreFiles(folder / f"{mode}.requests.npy", None, folder / f"{mode}.details.jsonl")
    if mode == "inproc":
        col = PointCollector(Aggregate(inline_limit=0), RequestStore(store))
        cpu0 = time.process_time()
        out = run(target, prompts, None, concurrency=conc, sink=col)
        col.close(out.start_ns)
        cpu = time.process_time() - cpu0
        agg = col.aggregate
        lag = pct(out.lag_samples_ns, 99) / 1e6 if out.lag_samples_ns else 0.0
        return agg, cpu, [(cpu, agg.total_output_tokens)], lag
    workers = int(mode[1:])
    cfg = RunConfig.from_flat(warmup=0, duration_s=None, grace_s=5.0, save_text=False, inline_requests=0)
    tasks = plan_tasks(cfg, target, prompts, np.zeros(len(prompts)), conc, store, workers)
    t0 = os.times()
    outcomes = procpool.run_tasks(tasks, counters=SummedCounters(len(tasks)), on_tick=lambda: None)
    t1 = os.times()
    cpu = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system) \
        + (t1.user - t0.user) + (t1.system - t0.system)
    merged = merge_outcomes(outcomes, goodput_slos_ms=None, inline_limit=0,
                            saturation_lag_p99_ms=SATURATION_LAG_P99_MS)
    per = [(o.result.cpu_s, aggregate_from_wire(o.result.aggregate).total_output_tokens)
           for o in outcomes if o.result is not None]
    return merged.aggregate, cpu, per, max(w["loop_lag_p99_ms"] for w in merged.workers)


def cpu_bench(args: argparse.Namespace) -> None:
    rows: dict[str, list[tuple[float, float, float]]] = {}
    with spawn("--ttft-ms", "0", "--itl-ms", "0", "--tokens", str(args.tokens), "--no-truth") as port, \
            tempfile.TemporaryDirectory() as tmp:
        target = Target(f"http://127.0.0.1:{port}", "vllm", "stream-test", timeout_s=120)
        n = args.streams * args.requests_per_stream
        prompts = [Prompt(i, 4, args.tokens, text=f"id={i} x") for i in range(n)]
        for rep in range(args.repeat):
            for mode in args.modes[rep % len(args.modes):] + args.modes[:rep % len(args.modes)]:  # rotate: share the noise
                t0 = time.monotonic()
                agg, cpu, per, lag = run_mode(mode, target, prompts, args.streams, Path(tmp))
                wall = time.monotonic() - t0
                chunks = agg.total_output_tokens
                worker_us = [c * 1e6 / max(k, 1) for c, k in per]
                rows.setdefault(mode, []).append((cpu * 1e6 / chunks, statistics.fmean(worker_us), chunks / wall))
                print(f"cpu {mode:6s} streams={args.streams} rep={rep}: {chunks} chunks, "
                      f"client CPU {cpu * 1e6 / chunks:.2f} us/chunk (workers: "
                      f"{', '.join(f'{u:.2f}' for u in worker_us)} us/chunk), {chunks / wall / 1000:.0f}k chunks/s "
                      f"wall incl. start, worker lag p99 {lag:.1f} ms | {load()}", flush=True)
    print("\nmedians:")
    base = statistics.median(r[0] for r in rows[args.modes[0]])
    for mode, rs in rows.items():
        total, worker, _ = (statistics.median(x) for x in zip(*rs, strict=True))
        print(f"  {mode:6s}: client CPU {total:.2f} us/chunk ({(total / base - 1) * 100:+.1f}% vs {args.modes[0]}), "
              f"per worker {worker:.2f} us/chunk -> one worker on one core sustains ~{1e6 / worker / 1000:.0f}k "
              f"chunks/s; N workers on N+1 cores ~N x that")


def accuracy_bench(args: argparse.Namespace) -> None:
    srv = ["--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms), "--tokens", str(args.tokens)]
    res: dict[str, list[tuple[float, float]]] = {}
    with spawn(*srv, cpu=args.server_cpu) as port, tempfile.TemporaryDirectory() as tmp:
        target = Target(f"http://127.0.0.1:{port}", "vllm", "stream-test", timeout_s=120)
        for rep in range(args.repeat):
            for mode in args.modes:
                http_json(port, "/reset", "POST")
                prompts = [Prompt(i, 4, args.tokens, text=f"id={i} bench prompt") for i in range(2 * args.concurrency)]
                agg, cpu, per, lag = run_mode(mode, target, prompts, args.concurrency, Path(tmp))
                truth = truth_figures(http_json(port, "/truth"))
                st = {m: agg.metrics[m].stats([99.0]) for m in ("ttft", "itl")}
                ttft_err = st["ttft"].mean - statistics.fmean(truth["ttft"])
                itl_err = st["itl"].percentiles[99.0] - pct(truth["itl"], 99)
                res.setdefault(mode, []).append((ttft_err, itl_err))
                print(f"accuracy {mode:6s} c={args.concurrency} rep={rep}: completed {agg.completed}, "
                      f"TTFT mean err {ttft_err:+.2f} ms, ITL p99 err {itl_err:+.3f} ms (HDR, 3 digits), "
                      f"worker lag p99 {lag:.1f} ms, client CPU {cpu:.1f} s | {load()}", flush=True)
    print("\nmedians:")
    for mode, rs in res.items():
        print(f"  {mode:6s} c={args.concurrency}: TTFT mean err {statistics.median(r[0] for r in rs):+.2f} ms, "
              f"ITL p99 err {statistics.median(r[1] for r in rs):+.3f} ms ({len(rs)} runs)")


def first_request_ms(port: int, t_launch_ns: int) -> float:
    """Launch → the first load request's arrival; the earliest one is pre-flight's probe."""
    arrivals = sorted(t["recv_ns"] for t in http_json(port, "/truth"))
    return (arrivals[1] - t_launch_ns) / 1e6 if len(arrivals) > 1 else float("nan")


def launch_bench(args: argparse.Namespace) -> None:
    import shutil

    from launcher.process import free_port, stop_tree

    cache = tempfile.mkdtemp(prefix="lgcache-")
    temp = tempfile.mkdtemp(prefix="lgray-")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOADGEN_CACHE_DIR": cache, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_proc = None
    variants = [("1 process", []), ("--workers 2", ["--workers", "2"])]
    if args.ray:
        rport = free_port()
        ray_proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", "--port", str(rport),
             "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard=false",
             "--temp-dir", temp, "--block"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        for line in ray_proc.stdout:  # type: ignore[union-attr]
            if b"will now block" in line:
                break
        variants.append(("Ray, 2 actors", ["--workers", "2", "--ray-address", f"127.0.0.1:{rport}"]))
    try:
        with spawn("--ttft-ms", "1", "--itl-ms", "1", "--tokens", "4") as port, \
                tempfile.TemporaryDirectory() as out:
            base = [sys.executable, "-c", "from loadgen.cli import main; main()", "--base-url",
                    f"http://127.0.0.1:{port}", "--backend", "vllm", "--tokenizer", "deepseek-r1",
                    "--num-prompts", str(args.prompts), "--input-len", "128", "--output-len", "4",
                    "--concurrency", "64", "--no-progress", "--no-verify-prompts", "--output-dir", out]
            subprocess.run(base, env=env, capture_output=True, check=True, timeout=300)  # fills the prompt cache
            figures: dict[str, list[float]] = {}
            for rep in range(args.repeat):
                for name, extra in variants:
                    http_json(port, "/reset", "POST")
                    t0 = time.perf_counter_ns()
                    p = subprocess.run(base + extra, env=env, capture_output=True, text=True, timeout=300)
                    if p.returncode != 0:
                        raise SystemExit(f"{name}: {p.stderr.strip()[-500:]}")
                    ms = first_request_ms(port, t0)
                    figures.setdefault(name, []).append(ms)
                    print(f"launch {name:14s} rep={rep}: first request {ms:.0f} ms after launch | {load()}",
                          flush=True)
    finally:
        if ray_proc is not None:
            stop_tree(ray_proc.pid, ray_proc.pid, timeout_s=20.0, popen=ray_proc)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)
    print("\nmedians:")
    for name, v in figures.items():
        print(f"  {name:14s}: launch -> first request {statistics.median(v):.0f} ms ({len(v)} runs)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("cpu", "accuracy", "launch"))
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--requests-per-stream", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--ttft-ms", type=float, default=100.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", default="1",
                    help="accuracy: cores for the client side, comma list, inherited by the workers ('' = any)")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--ray", action="store_true", help="launch: also on a local Ray cluster started here")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    if (os.cpu_count() or 1) <= args.server_cpu:
        args.server_cpu = None
    if args.mode == "accuracy" and args.server_cpu is not None and args.client_cpu:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    except (ValueError, OSError):
        pass
    print(f"{os.cpu_count()} CPUs | {load()}")
    {"cpu": cpu_bench, "accuracy": accuracy_bench, "launch": launch_bench}[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
