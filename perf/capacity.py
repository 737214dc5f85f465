"""The capacity search against a sim whose capacity is known analytically: found vs expected, and time taken.

    python perf/capacity.py [--slots 4] [--output-len 10] [--step-ms 100] [--time-scale 10] [--runs 1]

Profile: a fixed step of ``step-ms`` (÷ time scale), ``slots`` sequences, no prefill
cost; each request holds its slot for exactly ``output-len`` steps, so the capacity
is slots ÷ (output-len × step) requests/s (tests/loadgen/test_capacity_sim.py derives it).
Prints, per run: the analytic capacity, the found capacity, the interval, the
number of probes and the wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.console import Console

from launcher.process import free_port, stop_tree
from loadgen.config import RunConfig
from loadgen.search.method import SearchSpec, parse_slo
from loadgen.search.probes import run_search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--output-len", type=int, default=10)
    ap.add_argument("--step-ms", type=float, default=100.0)
    ap.add_argument("--time-scale", type=float, default=10.0)
    ap.add_argument("--slo", default="ttft:p99<=150")
    ap.add_argument("--duration", type=float, default=2.5)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--start", type=float, default=None, help="first rate probed [default: 0.3 x analytic]")
    args = ap.parse_args()
    expected = args.slots / (args.output_len * args.step_ms / args.time_scale / 1000.0)
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "fixed.json"
        profile.write_text(json.dumps({"name": "fixed", "base_ms": args.step_ms, "decode_seq_ms": 0,
                                       "prefill_token_ms": 0, "max_num_seqs": args.slots, "natural_len_median": 0}))
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "launcher.sim", "--port", str(port), "--profile", str(profile),
                                 "--time-scale", str(args.time_scale)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    urllib.request.urlopen(url + "/health", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            print(f"analytic capacity: {expected:g} req/s ({args.slots} slots, {args.output_len} tokens, "
                  f"{args.step_ms / args.time_scale:g} ms steps); SLO {args.slo}")
            for run in range(args.runs):
                cfg = RunConfig.from_flat(base_url=url, tokenizer="deepseek-r1", input_len=16, output_len=args.output_len,
                                arrival="constant", duration_s=args.duration, warmup_s=args.duration / 5,
                                output_dir=f"{tmp}/out{run}", num_prompts=200, progress=False, seed=run)
                spec = SearchSpec("rate", (parse_slo(args.slo),), start=args.start or round(0.3 * expected, 3), boundary_repeats=2)
                t0 = time.monotonic()
                rec = run_search(cfg, spec, console=Console(quiet=True)).record
                lo, hi = rec["interval"]
                print(f"run {run + 1}: found {rec['capacity']:g} req/s ({rec['capacity'] / expected:.1%} of analytic), "
                      f"interval {lo:.4g}–{hi:.4g}, boundary {rec['boundary']:.4g}, {len(rec['probes'])} probes, "
                      f"{time.monotonic() - t0:.0f} s, client saturated: {rec['client_saturated']}")
        finally:
            stop_tree(proc.pid, proc.pid, timeout_s=5.0, popen=proc)


if __name__ == "__main__":
    main()
