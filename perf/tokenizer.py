"""What does loading the tokenizer cost a fresh process? (the lean start of issue 9)

    .venv/bin/python perf/tokenizer.py                 # deepseek-r1, 5 fresh processes
    .venv/bin/python perf/tokenizer.py --tokenizer PATH --runs 3

Each run is a new interpreter that imports ``loadgen.workload``, loads the tokenizer
and encodes one string; it reports the import time, the load time and the process's
peak RSS. Also times ``build_prompts`` of a cached set (no tokenizer load at all).
The machine is shared, so the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import loadgen.workload as workload
from loadgen.workload.tokenizer import load_tokenizer
t1 = time.perf_counter()
if sys.argv[2] == "load":
    tok = load_tokenizer(sys.argv[1])
    tok.encode("hello world")
else:
    spec = workload.WorkloadSpec(num_prompts=2048, input_len=128, tokenizer=sys.argv[1])
    workload.build_prompts(spec)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "work_s": t2 - t1, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "heavy": sorted(m for m in ("transformers", "torch", "tokenizers", "numpy") if m in sys.modules)}))
"""


def _child(tokenizer: str, what: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, tokenizer, what], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default="deepseek-r1")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="loadgen-bench-") as cache:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LOADGEN_CACHE_DIR": cache}
        _child(args.tokenizer, "load", env)  # warm the file cache and the corrected config
        for what, label in (("load", "load tokenizer + encode"), ("cached", "build_prompts, 2,048 x 128 from the cache")):
            if what == "cached":
                _child(args.tokenizer, "cached", env)  # fills the prompt cache
            runs = [_child(args.tokenizer, what, env) for _ in range(args.runs)]
            print(
                f"{label}: import {statistics.median(r['import_s'] for r in runs) * 1e3:.0f} ms, "
                f"work {statistics.median(r['work_s'] for r in runs) * 1e3:.0f} ms, "
                f"peak RSS {statistics.median(r['rss_mb'] for r in runs):.0f} MB "
                f"(median of {args.runs}); modules loaded: {', '.join(runs[0]['heavy']) or 'none of the heavy ones'}; "
                f"load avg {os.getloadavg()[0]:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
