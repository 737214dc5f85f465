"""How often `loadgen compare` cries wolf, and how often it finds a real slowdown (docs/compare.md).

    python perf/compare.py [--pairs 20] [--slowdown 1.1] [--threshold 5%] [--num-prompts 400] [--pin]

Three sims run side by side: A and A' with the same profile and time scale, and B
``--slowdown`` times slower (``--time-scale`` divided by it). Each pair runs the same
workload (a seed of its own) against A (base), A' (identical) and B (slowed), then
gates A' against A and B against A with the ``loadgen compare`` command line, as a
CI job would. Prints each pair's exit codes and the flagged metrics, then the
false-alarm rate (exit 1 on identical configurations) and the detection rate (exit
1 on the slowed one). With ``--pin`` the sims run on CPU 0 and the client on CPU 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from launcher.process import free_port, stop_tree

BIN = Path(sys.executable).parent


def start_sim(profile: str, time_scale: float, pin: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "launcher.sim", "--port", str(port), "--profile", profile,
           "--time-scale", repr(time_scale)]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    stop_tree(proc.pid, proc.pid, timeout_s=5.0, popen=proc)
    raise SystemExit(f"sim on {url} did not start")


def run_point(url: str, out: Path, seed: int, args: argparse.Namespace) -> None:
    cmd = [str(BIN / "loadgen"), "--base-url", url, "--tokenizer", "deepseek-r1", "--input-len", str(args.input_len),
           "--output-len", str(args.output_len), "--concurrency", str(args.concurrency), "--rate", args.rate,
           "--num-prompts",
           str(args.num_prompts), "--seed", str(seed), "--goodput", f"ttft:{args.goodput_ttft_ms}",
           "--output-dir", str(out), "--no-progress"]
    if args.pin:
        cmd = ["taskset", "-c", "1", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"loadgen failed ({done.returncode}): {done.stderr.strip()[-300:]}")


def gate(base: Path, new: Path, threshold: str) -> tuple[int, list[str]]:
    done = subprocess.run([str(BIN / "loadgen"), "compare", str(base), str(new), "--threshold", threshold,
                           "--format", "json"], capture_output=True, text=True)
    if done.returncode not in (0, 1, 3):
        raise SystemExit(f"loadgen compare failed ({done.returncode}): {done.stderr.strip()}")
    data = json.loads(done.stdout)
    limit = data["threshold"]
    flagged = []
    lenient = False  # the looser rule: interval excludes zero and the estimate alone is beyond the threshold
    for m in (m for p in data["points"] for m in p["metrics"] if m["ci_low"] is not None):
        worse = -1 if m["higher_is_better"] else 1
        lo, hi = sorted((worse * m["ci_low"], worse * m["ci_high"]))
        lenient |= lo > 0 and worse * m["change"] > limit
        if m["verdict"] == "regression":
            flagged.append(f"{m['metric']} {m['change'] * 100:+.1f}% [{m['ci_low'] * 100:+.1f}, "
                           f"{m['ci_high'] * 100:+.1f}]")
    return done.returncode, flagged, lenient


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--slowdown", type=float, default=1.1)
    ap.add_argument("--threshold", default="5%")
    ap.add_argument("--profile", default="vllm-0.8.2-h20x8-r1-eager")
    ap.add_argument("--time-scale", type=float, default=20.0)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rate", default="40", help="requests/s (Poisson); 'inf' for a closed loop at --concurrency")
    ap.add_argument("--num-prompts", type=int, default=300)
    ap.add_argument("--goodput-ttft-ms", type=float, default=200.0)
    ap.add_argument("--pin", action="store_true", help="sims on CPU 0, client on CPU 1 (taskset)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the sims on kill too
    os.environ.setdefault("LOADGEN_CACHE_DIR", tempfile.mkdtemp(prefix="loadgen-perf-cache-"))
    sims = {name: start_sim(args.profile, scale, args.pin) for name, scale in
            (("A", args.time_scale), ("A2", args.time_scale), ("B", args.time_scale / args.slowdown))}
    alarms = found = judged_same = judged_slow = lenient_alarms = lenient_found = 0
    print(f"profile {args.profile} at time scale {args.time_scale:g} (B: {args.time_scale / args.slowdown:g}); "
          f"{args.num_prompts} prompts {args.input_len}->{args.output_len} at rate {args.rate}, "
          f"concurrency {args.concurrency}; "
          f"threshold {args.threshold}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, (_, url) in sims.items():  # one warm-up run each, not counted
                run_point(url, Path(tmp) / f"warm-{name}", 999, args)
            for i in range(args.pairs):
                dirs = {name: Path(tmp) / f"{i}-{name}" for name in sims}
                for name, (_, url) in sims.items():
                    run_point(url, dirs[name], i, args)
                same_rc, same_flags, same_lenient = gate(dirs["A"], dirs["A2"], args.threshold)
                slow_rc, slow_flags, slow_lenient = gate(dirs["A"], dirs["B"], args.threshold)
                alarms += same_rc == 1
                found += slow_rc == 1
                lenient_alarms += same_lenient
                lenient_found += slow_lenient
                judged_same += same_rc != 3
                judged_slow += slow_rc != 3
                print(f"pair {i + 1:2d}: identical exit {same_rc} {', '.join(same_flags) or '-'} | "
                      f"slowed exit {slow_rc} {', '.join(slow_flags) or '-'}", flush=True)
    finally:
        for proc, _ in sims.values():
            stop_tree(proc.pid, proc.pid, timeout_s=5.0, popen=proc)
    print(f"false alarms: {alarms}/{args.pairs} identical pairs ({judged_same} judged); "
          f"slowdown {args.slowdown:g}x found: {found}/{args.pairs} ({judged_slow} judged)")
    print(f"looser rule (estimate beyond the threshold, interval excluding zero): false alarms "
          f"{lenient_alarms}/{args.pairs}, found {lenient_found}/{args.pairs}")


if __name__ == "__main__":
    main()
