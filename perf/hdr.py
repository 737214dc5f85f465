"""How fast samples go into an HDR histogram: per-value ``record_value`` vs loadgen's bulk path.

Run: ``.venv/bin/python perf/hdr_record.py [--samples N] [--records N --chunks N]``.
Prints samples/s for both and checks that they built the same histogram. The target
for the bulk path is >= 1M samples/s (a long run has millions of ITL samples).
It also times the whole post-run path on synthetic records: records → per-request
figures (TTFT, TPOT, ITL split by tokens per chunk) → the five HDR histograms.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from loadgen import hdr_record
from loadgen.aggregate import Aggregate
from loadgen.metrics import per_request
from loadgen.records import RequestRecord


def synthetic_records(n: int, chunks: int, rng: np.random.Generator) -> list[RequestRecord]:
    """Streams with ~20 ms gaps; every fifth chunk carries two tokens."""
    out = []
    t = 10**12
    for i in range(n):
        sent = t + i * 1_000_000
        gaps = rng.gamma(4.0, 5_000_000, chunks).astype(np.int64)
        stamps = (sent + 50_000_000 + np.cumsum(gaps)).tolist()
        tokens = [2 if k % 5 == 4 else 1 for k in range(chunks)]
        out.append(RequestRecord(
            prompt_id=i, input_len=128, output_len=sum(tokens), intended_ns=sent, sent_ns=sent,
            first_ns=stamps[0], last_ns=stamps[-1], chunk_ns=stamps, chunk_tokens=tokens,
            output_tokens=sum(tokens), output_tokens_source="usage",
        ))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2_000_000, help="samples for the bulk path")
    parser.add_argument("--per-value-samples", type=int, default=200_000, help="samples for record_value")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--records", type=int, default=10_000, help="synthetic requests for the post-run path")
    parser.add_argument("--chunks", type=int, default=200, help="chunks per synthetic request")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    # ITL-like µs values: mostly tens of ms, a long tail over several decades
    values = np.clip(rng.lognormal(np.log(20_000), 1.0, args.samples), 0, hdr_record.HIGHEST_US).astype(np.int64)

    best = float("inf")
    for _ in range(args.repeat):
        h = hdr_record.new_histogram()
        t0 = time.perf_counter()
        hdr_record.record_array(h, values)
        best = min(best, time.perf_counter() - t0)
    bulk_rate = args.samples / best

    few = values[: args.per_value_samples]
    ref = hdr_record.new_histogram()
    t0 = time.perf_counter()
    for v in few.tolist():
        ref.record_value(v)
    per_value_s = time.perf_counter() - t0
    per_value_rate = len(few) / per_value_s

    check = hdr_record.new_histogram()
    hdr_record.record_array(check, few)
    same = list(check.counts) == list(ref.counts) and check.encode() == ref.encode()

    print(f"per-value record_value : {per_value_rate / 1e6:8.3f} M samples/s ({per_value_s / len(few) * 1e6:.2f} µs/sample, n={len(few):,})")
    print(f"bulk record_array      : {bulk_rate / 1e6:8.3f} M samples/s (best of {args.repeat}, n={args.samples:,})")
    print(f"speed-up               : {bulk_rate / per_value_rate:8.1f}x")
    print(f"identical histograms   : {same}")
    print(f"target >= 1M/s         : {'met' if bulk_rate >= 1e6 else 'MISSED'}")

    records = synthetic_records(args.records, args.chunks, rng)
    t0 = time.perf_counter()
    fig = per_request(records)
    t1 = time.perf_counter()
    agg = Aggregate(inline_limit=0)
    agg.add(records)  # what a run does with finished requests: figures, histograms, exact moments
    t2 = time.perf_counter()
    itl = agg.histograms()["itl"]
    print(f"after a run, {args.records:,} records x {args.chunks} chunks ({fig.itl_ms.size:,} ITL samples):")
    print(f"  per-request figures  : {t1 - t0:8.3f} s ({fig.itl_ms.size / (t1 - t0) / 1e6:.2f} M ITL samples/s)")
    print(f"  the whole aggregate  : {t2 - t1:8.3f} s (figures + 7 histograms + moments; itl p99 "
          f"{itl.get_value_at_percentile(99) / 1000:.2f} ms)")

if __name__ == "__main__":
    main()
