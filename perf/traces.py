"""Trace replay: how close to the trace's times requests go out, and what a long trace costs.

Each mode runs the real CLI as a child pinned to one core against
``tests/servers/stream_server.py`` pinned to the other (whole responses of 2 tokens at
once, so the server costs little), like ``perf/footprint.py``.

* ``rate``: an Azure-shaped trace (the code trace's input and output lengths when
  ``--azure FILE`` is given, else 2,048 / 28 tokens) with Poisson arrivals, replayed at
  ``--rate`` requests/s through ``--trace-speedup``: the result's release lateness
  (``trace.lag_ms``: p50, p99, max) and whether the replay fell behind; with
  ``--baseline``, alternated with the same rate from loadgen's own Poisson schedule
  (2,048-token random prompts), whose queue time is the same lateness.
* ``hour``: a one-hour Mooncake-shaped trace (``--requests`` requests, conversations whose
  turns grow by a few blocks and share their history's hash ids, ~12,000 input tokens on
  average), replayed whole at ``--speedup``: launch → the first trace request at the
  server ("ready to send"), and the client's peak RSS over the whole replay.

* ``floor``: an event loop with nothing scheduled on the client's core: the loop lag the
  machine itself imposes (another job holding the core), below which no schedule can go.

    python perf/traces.py rate --rate 1000 --repeat 3 [--baseline]
    python perf/traces.py hour --repeat 3
    python perf/traces.py floor --repeat 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perf.footprint import common, compile_bytecode, http_json, only_result, print_medians, run_cli_cpu  # noqa: E402
from tests.servers.stream_server import spawn  # noqa: E402

BLOCK = 512


def azure_shaped(path: Path, n: int, rate: float, azure: str | None, seed: int = 0) -> None:
    """An Azure CSV of ``n`` Poisson arrivals at ``rate`` /s (lengths drawn from ``azure`` when given)."""
    rng = np.random.default_rng(seed)
    if azure:
        rows = np.loadtxt(azure, delimiter=",", skiprows=1, usecols=(1, 2), dtype=np.int64)
        pick = rows[rng.integers(0, len(rows), size=n)]
        ins, outs = pick[:, 0], np.maximum(pick[:, 1], 1)
    else:
        ins, outs = np.full(n, 2048), np.full(n, 28)
    times = np.concatenate(([0.0], np.cumsum(rng.exponential(1.0 / rate, size=n - 1))))
    base = np.datetime64("2023-11-16T18:00:00", "ns")
    with path.open("w") as fh:
        fh.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        for t, i, o in zip(times, ins.tolist(), outs.tolist(), strict=True):
            stamp = str(base + np.timedelta64(int(t * 1e9), "ns")).replace("T", " ")[:27]
            fh.write(f"{stamp},{i},{o}\n")


def mooncake_hour(path: Path, n: int, span_s: float, mean_tokens: float, seed: int = 0) -> float:
    """A Mooncake JSONL: conversations whose every turn repeats the history's hash ids and adds
    a few blocks, interleaved over ``span_s`` seconds of Poisson arrivals. Returns the mean input."""
    rng = np.random.default_rng(seed)
    convs: list[list[list[int]]] = []
    next_id = 0
    total = 0
    mean_blocks = mean_tokens / BLOCK
    while total < n:
        turns = int(rng.integers(1, 9))
        blocks = max(1, int(rng.normal(mean_blocks * 0.8, mean_blocks * 0.25)))
        history = list(range(next_id, next_id + blocks))
        next_id += blocks
        conv = []
        for _ in range(min(turns, n - total)):
            conv.append(list(history))
            grow = int(rng.integers(1, max(2, int(mean_blocks * 0.25))))
            history += list(range(next_id, next_id + grow))
            next_id += grow
        convs.append(conv)
        total += len(conv)
    # interleave: each slot goes to a conversation with turns left, chosen at random (turn order kept)
    owners = np.repeat(np.arange(len(convs)), [len(c) for c in convs])
    rng.shuffle(owners)
    times_ms = np.sort(rng.uniform(0, span_s * 1000, size=n)).astype(np.int64)
    times_ms[0] = 0
    taken = [0] * len(convs)
    lengths = []
    with path.open("w") as fh:
        for t, c in zip(times_ms.tolist(), owners.tolist(), strict=True):
            ids = convs[c][taken[c]]
            taken[c] += 1
            n_in = len(ids) * BLOCK - int(rng.integers(0, BLOCK))
            lengths.append(n_in)
            fh.write(json.dumps({"timestamp": t, "input_length": n_in, "output_length": int(rng.integers(20, 400)),
                                 "hash_ids": ids}) + "\n")
    return float(np.mean(lengths))


def replay(port: int, out: Path, cpu: int, *options: str) -> tuple[dict, float, int, float]:
    """One loadgen run with ``options`` into ``out``: (its result, wall seconds, peak RSS in KiB, CPU seconds)."""
    code, wall, rss, cpu_s, err = run_cli_cpu(
        [*common(port, out), *options, "--server-metrics", "off", "--no-verify-prompts"], cpu)
    if code != 0:
        raise SystemExit(f"loadgen failed ({code}): {err}")
    return only_result(out), wall, rss, cpu_s


def rate(args: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            spawn("--ttft-ms", "0", "--itl-ms", "0", "--tokens", "2", "--no-truth", cpu=args.server_cpu) as port:
        trace = Path(tmp) / "azure.csv"
        azure_shaped(trace, args.requests, 1.0, args.azure)  # 1 req/s: --trace-speedup is the rate
        for rep in range(args.repeat):
            res, _, rss, cpu_s = replay(port, Path(tmp) / f"out{rep}", args.client_cpu, "--dataset-name", "azure",
                                        "--dataset-path", str(trace), "--trace-speedup", str(args.rate))
            lag = res["trace"]["lag_ms"]
            row = {"offered_req_s": (res["trace"]["requests"] - 1) / res["trace"]["span_s"],
                   "achieved_req_s": res["request_throughput"], "lag_p50_ms": lag["p50"], "lag_p99_ms": lag["p99"],
                   "lag_max_ms": lag["max"], "loop_lag_p99_ms": res["loop_lag_p99_ms"], "rss_mb": rss / 1024,
                   "client_cpu_s": cpu_s, "behind": float(res["trace"]["behind"])}
            if args.baseline:  # the same load from loadgen's own Poisson schedule and random prompts, alternated
                base, _, _, _ = replay(port, Path(tmp) / f"base{rep}", args.client_cpu, "--rate", str(args.rate),
                                    "--num-prompts", str(args.requests), "--input-len", "2048", "--output-len", "28")
                row.update(base_queue_p50_ms=base["median_queue_ms"], base_queue_p99_ms=base["p99_queue_ms"],
                           base_loop_lag_p99_ms=base["loop_lag_p99_ms"])
            rows.append(row)
            print(json.dumps({"repeat": rep, **{k: round(v, 3) for k, v in row.items()}}), flush=True)
    print_medians(rows)


def hour(args: argparse.Namespace) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            spawn("--ttft-ms", "0", "--itl-ms", "0", "--tokens", "2", cpu=args.server_cpu) as port:
        trace = Path(tmp) / "mooncake.jsonl"
        mean_in = mooncake_hour(trace, args.requests, 3600.0, args.mean_tokens)
        print(json.dumps({"trace": str(trace), "requests": args.requests, "mean_input_tokens": round(mean_in),
                          "bytes": trace.stat().st_size}), flush=True)
        for rep in range(args.repeat):
            http_json(port, "/reset", "POST")
            launched = time.perf_counter_ns()
            res, wall, rss, _ = replay(port, Path(tmp) / f"out{rep}", args.client_cpu, "--dataset-name", "mooncake",
                                    "--dataset-path", str(trace), "--trace-speedup", str(args.speedup))
            arrivals = sorted(t["recv_ns"] for t in http_json(port, "/truth"))
            lag = res["trace"]["lag_ms"]
            row = {"ready_s": (arrivals[1] - launched) / 1e9, "rss_mb": rss / 1024, "wall_s": wall,
                   "completed": res["completed"], "lag_p99_ms": lag["p99"], "lag_max_ms": lag["max"]}
            rows.append(row)
            print(json.dumps({"repeat": rep, **{k: round(v, 3) for k, v in row.items()}}), flush=True)
    print_medians(rows)


def floor(args: argparse.Namespace) -> None:
    """The lateness floor of this machine: a uvloop event loop on the client's core with nothing
    to do but the runner's lag monitor (a 10 ms timer) for ``--seconds``. What a schedule's
    lateness shows above this, the client added."""
    code = ("import asyncio, json, uvloop\n"
            "from loadgen.lag import LagMonitor, lag_percentiles_ms\n"
            "async def main():\n"
            "    m = LagMonitor(); m.start(); await asyncio.sleep(SECONDS)\n"
            "    p50, p99, mx = lag_percentiles_ms(m.stop())\n"
            "    print(json.dumps({'loop_lag_p50_ms': p50, 'loop_lag_p99_ms': p99, 'loop_lag_max_ms': mx}))\n"
            "uvloop.run(main())\n").replace("SECONDS", repr(args.seconds))
    rows = []
    for rep in range(args.repeat):
        out = subprocess.run(["taskset", "-c", str(args.client_cpu), sys.executable, "-c", code], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out))
        print(json.dumps({"repeat": rep, **rows[-1]}), flush=True)
    print_medians(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["rate", "hour", "floor"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0, help="rate: requests/s after the speed-up")
    ap.add_argument("--requests", type=int, default=None, help="rate: 10,000; hour: 12,000")
    ap.add_argument("--azure", default=None, help="rate: draw lengths from this Azure CSV")
    ap.add_argument("--baseline", action="store_true",
                    help="rate: after each replay, the same rate as a random-prompt Poisson run (queue time = lag)")
    ap.add_argument("--mean-tokens", type=float, default=12_000.0, help="hour: mean input tokens")
    ap.add_argument("--speedup", type=float, default=60.0, help="hour: replay the hour this much faster")
    ap.add_argument("--seconds", type=float, default=10.0, help="floor: how long the empty loop runs")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    args = ap.parse_args()
    if args.requests is None:
        args.requests = 10_000 if args.mode == "rate" else 12_000
    compile_bytecode()
    {"rate": rate, "hour": hour, "floor": floor}[args.mode](args)


if __name__ == "__main__":
    main()
