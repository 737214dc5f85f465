"""How long does building a random prompt set take? (target: 10,000 x 1,024 tokens <= 15 s)

    .venv/bin/python perf/prompts.py                      # 10,000 x 1,024, completions
    .venv/bin/python perf/prompts.py --chat --repeat 3
    .venv/bin/python perf/prompts.py -n 2000 --input-len 4096

Times a cold build (cache off, tokenizer already loaded, as in a sweep's first point;
the first build also makes the tokenizer's piece table, cached afterwards) and, once,
a warm load from the on-disk cache. Every run re-counts a sample of the
built prompts with the tokenizer's public API and reports any disagreement. The
machine is shared, so the load average is printed next to each figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import loadgen.workload as workload  # noqa: E402
from loadgen.workload import WorkloadSpec, build_prompts, check_lengths  # noqa: E402
from loadgen.workload.tokenizer import load_tokenizer  # noqa: E402

CORES = os.cpu_count() or 1


def _cpu_s() -> float:
    """CPU time of this process and its reaped pool workers. Steadier than wall time on
    a shared machine, though contention still inflates it (caches, memory bandwidth)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--num-prompts", type=int, default=10_000)
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--tokenizer", default="deepseek-r1")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    scratch = None
    if "LOADGEN_CACHE_DIR" not in os.environ:  # keep the user's cache out of it
        scratch = tempfile.mkdtemp(prefix="loadgen-bench-")
        os.environ["LOADGEN_CACHE_DIR"] = scratch
    try:
        return _run(args)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    tok = load_tokenizer(args.tokenizer)
    print(f"tokenizer load: {time.perf_counter() - t0:.2f} s")

    times = []
    prompts = []
    for r in range(args.repeat):
        spec = WorkloadSpec(
            num_prompts=args.num_prompts, input_len=args.input_len, chat=args.chat,
            tokenizer=args.tokenizer, seed=args.seed + r,
        )
        load_before = os.getloadavg()[0]
        cpu0 = _cpu_s()
        t0 = time.perf_counter()
        prompts = build_prompts(spec, tok, use_cache=False)
        elapsed = time.perf_counter() - t0
        cpu = _cpu_s() - cpu0
        times.append(elapsed)
        print(
            f"build {args.num_prompts} x {args.input_len} ({'chat' if args.chat else 'completions'}, seed {spec.seed}): "
            f"{elapsed:.2f} s wall ({args.num_prompts / elapsed:.0f} prompts/s), {cpu:.1f} CPU-s "
            f"on {CORES} cores, load avg before {load_before:.2f}, "
            f"after {os.getloadavg()[0]:.2f}; fitter {workload.last_build.fitter}"
            + (" (fast set failed its re-count, rebuilt)" if workload.last_build.rebuilt else "")
        )
    bad = check_lengths(tok, prompts, 200)
    print(f"re-counted 200 sampled prompts with the tokenizer's public API: {len(bad)} disagreements")

    spec = WorkloadSpec(num_prompts=args.num_prompts, input_len=args.input_len, chat=args.chat,
                        tokenizer=args.tokenizer, seed=args.seed)
    build_prompts(spec, tok)  # fills the cache
    t0 = time.perf_counter()
    cached = build_prompts(spec, tok)
    print(f"load from cache: {time.perf_counter() - t0:.2f} s ({len(cached)} prompts)")
    if len(times) > 1:
        print(f"build median {statistics.median(times):.2f} s, min {min(times):.2f} s, max {max(times):.2f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
