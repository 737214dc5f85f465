"""The whole ``loadgen`` command's footprint: peak memory, start-up, a million requests.

Each mode runs the real CLI (``python -m loadgen.cli``) as a child pinned to one core
against ``tests/servers/stream_server.py`` pinned to the other, and reads the child's peak
resident set size from ``/usr/bin/time -v`` ("Maximum resident set size"). Medians over ``--repeat`` runs are printed.

* ``streams``: 1,024 streams (TTFT 100 ms, ITL 20 ms, 256 tokens): peak RSS, and the
  result file's TTFT mean and ITL p99 against the server's own log of what it did; with
  ``--cold prompts`` the set is built from the stored piece table and re-counted beside
  the run (what that costs the figures).
* ``startup``: launch → the first benchmark request reaching the server, with the
  prompt set cached (the default), built (``--cold prompts``), or on a machine's first
  run, with an empty cache (``--cold first-use``), 2,048 × 128 tokens.
* ``million``: 1,000,000 requests (16 in / 8 out, concurrency 256, whole responses at
  once): peak RSS, every request accounted for, then ``loadgen-report`` on the result.

    python perf/footprint.py streams --repeat 3 [--cold prompts]
    python perf/footprint.py startup --repeat 3 [--cold prompts|first-use]
    python perf/footprint.py million --requests 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers.stream_server import spawn  # noqa: E402


def http_json(port: int, path: str, method: str = "GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def run_cli(args: list[str], cpu: int, env: dict[str, str] | None = None) -> tuple[int, float, int, str]:
    """(exit code, wall seconds, peak RSS in KiB, stderr) of one loadgen run on ``cpu``."""
    code, wall, rss, _, err = run_cli_cpu(args, cpu, env)
    return code, wall, rss, err


def run_cli_cpu(args: list[str], cpu: int, env: dict[str, str] | None = None) -> tuple[int, float, int, float, str]:
    """:func:`run_cli` plus the child's CPU seconds (user + system).

    The peak comes from ``/usr/bin/time -v``: a child forked straight from this
    (large) process would inherit its high-water mark, since Linux keeps
    ``ru_maxrss`` across ``exec``.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".time") as rep:
        cmd = ["/usr/bin/time", "-v", "-o", rep.name, "taskset", "-c", str(cpu), sys.executable, "-m", "loadgen.cli",
               *args]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, **(env or {})}, check=False)
        wall = time.perf_counter() - t0
        text = rep.read()
    fields = dict(line.strip().rsplit(": ", 1) for line in text.splitlines() if ": " in line)
    rss = int(fields["Maximum resident set size (kbytes)"])
    cpu_s = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
    return proc.returncode, wall, rss, cpu_s, proc.stderr.decode()


EXTRA: list[str] = []  # --loadgen-args


def common(port: int, out: Path | None) -> list[str]:
    """The options every mode passes; the output folder is added by the caller when ``out`` is None."""
    return ["--base-url", f"http://127.0.0.1:{port}", "--tokenizer", "deepseek-r1", "--no-progress",
            *([] if out is None else ["--output-dir", str(out)]), *EXTRA]


def only_result(out: Path) -> dict:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def prepared_cache(tmp: str, run_args: list[str], cpu: int, cold: str | None) -> dict[str, str]:
    """A private cache for ``run_args``: the prompt set cached (``cold`` None), only the
    tokenizer's piece table kept (``prompts``), or empty (``first-use``)."""
    cache = Path(tmp) / "cache"
    env = {"LOADGEN_CACHE_DIR": str(cache)}
    if cold != "first-use":  # build the set once, then measure with it cached
        run_cli([*run_args, "--output-dir", str(Path(tmp) / "warm")], cpu, env)
    if cold == "prompts":  # the prompt set is built again; the tokenizer's tables are kept
        shutil.rmtree(cache / "prompts")
    return env


def streams(args: argparse.Namespace) -> None:
    rows = []
    with spawn("--ttft-ms", "100", "--itl-ms", "20", "--tokens", "256", cpu=args.server_cpu) as port:
        for rep in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                run_args = [*common(port, None), "--concurrency", str(args.concurrency),
                            "--num-prompts", str(2 * args.concurrency), "--input-len", "16", "--output-len", "256"]
                env = prepared_cache(tmp, run_args, args.client_cpu, args.cold)
                http_json(port, "/reset", "POST")
                code, wall, rss, err = run_cli([*run_args, "--output-dir", str(Path(tmp) / "out")], args.client_cpu, env)
                if code != 0:
                    raise SystemExit(f"loadgen failed ({code}): {err}")
                res = only_result(Path(tmp) / "out")
            truth = [t for t in http_json(port, "/truth") if len(t["send_ns"]) > 2]  # not the 2-token probe
            ttft = statistics.fmean((t["send_ns"][0] - t["recv_ns"]) / 1e6 for t in truth)
            itl = np.concatenate([np.diff(np.asarray(t["send_ns"], np.float64)) / 1e6 for t in truth])
            row = {"rss_mb": rss / 1024, "wall_s": wall, "completed": res["completed"],
                   "ttft_mean_err_ms": res["mean_ttft_ms"] - ttft,
                   "itl_p99_err_ms": res["p99_itl_ms"] - float(np.percentile(itl, 99)),
                   "lag_p99_ms": res["loop_lag_p99_ms"]}
            rows.append(row)
            print(json.dumps({"repeat": rep, "cold": args.cold, **{k: round(v, 3) for k, v in row.items()}}),
                  flush=True)
    print_medians(rows)


def startup(args: argparse.Namespace) -> None:
    rows = []
    with spawn("--ttft-ms", "1", "--itl-ms", "1", "--tokens", "2", cpu=args.server_cpu) as port:
        for rep in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                run_args = [*common(port, None), "--concurrency", "1", "--num-prompts", "2048",
                            "--input-len", "128", "--output-len", "2"]
                env = prepared_cache(tmp, run_args, args.client_cpu, args.cold)
                http_json(port, "/reset", "POST")
                launched = time.perf_counter_ns()
                code, wall, rss, err = run_cli([*run_args, "--output-dir", str(Path(tmp) / "out")], args.client_cpu,
                                               env)
                if code != 0:
                    raise SystemExit(f"loadgen failed ({code}): {err}")
            arrivals = sorted(t["recv_ns"] for t in http_json(port, "/truth"))
            row = {"first_request_s": (arrivals[1] - launched) / 1e9, "probe_s": (arrivals[0] - launched) / 1e9,
                   "rss_mb": rss / 1024, "wall_s": wall}
            rows.append(row)
            print(json.dumps({"repeat": rep, "cold": args.cold, **{k: round(v, 3) for k, v in row.items()}}),
                  flush=True)
    print_medians(rows)


def million(args: argparse.Namespace) -> None:
    with spawn("--ttft-ms", "0", "--itl-ms", "0", "--no-truth", cpu=args.server_cpu) as port, \
            tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        out = Path(tmp) / "out"
        code, wall, rss, err = run_cli(
            [*common(port, out), "--concurrency", str(args.concurrency), "--num-prompts", str(args.requests),
             "--input-len", "16", "--output-len", "8", "--no-verify-prompts"], args.client_cpu)
        res = only_result(out)
        sizes = {p.name.split(".", 1)[1]: p.stat().st_size for p in out.iterdir()}
        t0 = time.perf_counter()
        rep = subprocess.run([sys.executable, "-m", "analysis.cli", str(out), "--out", str(Path(tmp) / "report")],
                             cwd=ROOT, capture_output=True, text=True, check=False)
        report_s = time.perf_counter() - t0
        print(json.dumps({
            "exit": code, "requests": args.requests, "wall_s": round(wall, 1), "rss_mb": round(rss / 1024, 1),
            "completed": res["completed"], "failed": res["failed"], "store_rows": res["per_request"]["rows"],
            "request_throughput": round(res["request_throughput"], 1), "lag_p99_ms": res["loop_lag_p99_ms"],
            "files_bytes": sizes, "report_exit": rep.returncode, "report_s": round(report_s, 2),
        }), flush=True)
        if code != 0:
            print(err, file=sys.stderr)


def print_medians(rows: list[dict]) -> None:
    print("median of", len(rows), json.dumps({k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}))


def compile_bytecode() -> None:
    """Start-up is measured as installed: pip writes the bytecode of an installed package,
    but a checkout under ``PYTHONDONTWRITEBYTECODE`` (or never run) would compile every
    module from source on every start and time the compiler instead."""
    import compileall

    for package in ("loadgen", "launcher", "analysis"):
        compileall.compile_dir(ROOT / package, quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["streams", "startup", "million"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--cold", choices=["prompts", "first-use"], default=None,
                    help="startup, streams: build the prompt set (prompts), or start from an empty cache as on a machine's "
                         "first run (first-use: the tokenizer's piece table is built too)")
    ap.add_argument("--tmp", default=None, help="folder for the million-request files (default: system temp)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--loadgen-args", default="", help="more loadgen options, e.g. '--server-metrics off'")
    args = ap.parse_args()
    EXTRA.extend(args.loadgen_args.split())
    if args.concurrency is None:
        args.concurrency = 1024 if args.mode == "streams" else 256
    compile_bytecode()
    {"streams": streams, "startup": startup, "million": million}[args.mode](args)


if __name__ == "__main__":
    main()
