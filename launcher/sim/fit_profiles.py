"""Fit the sim's engine profiles to the field report's measured tables.

    python -m launcher.sim.fit_profiles            # fit both, write profiles + residuals
    python -m launcher.sim.fit_profiles --check    # only print residuals of the shipped profiles

Writes ``launcher/sim/profiles/<name>.json`` and ``launcher/sim/profiles/fit-residuals.md``.
The capacities (slots, per-step token budget, schedule) come from the report's
command lines; the step costs and the effective KV capacity are fitted.
"""

from __future__ import annotations

import argparse
import sys
import time

from launcher.sim.fit import (
    FIT_PARAMS,
    FITTED,
    SEED_DIR,
    acceptance,
    fit,
    load_table,
    markdown,
    residual_table,
)
from launcher.sim.profiles import PROFILE_DIR, Profile, load_profile

# SGLang's TPOT grows sub-linearly with the batch (CUDA graphs), so its fit also
# searches the decode-cost exponent; vLLM's eager TPOT is nearly flat and linear.
PARAMS = {
    "vllm-0.8.2-h20x8-r1-eager": FIT_PARAMS,
    "sglang-h20x8-r1": (*FIT_PARAMS, "decode_seq_exp"),
}

# The model's own habit of stopping early (vLLM's run did not ignore EOS: ~119 of
# 128 and ~226 of 256 tokens on average): a log-normal natural length with these
# parameters gives those two means.
NATURAL = {"natural_len_median": 1440.0, "natural_len_sigma": 2.1}

STARTS = {
    "vllm-0.8.2-h20x8-r1-eager": Profile(
        name="vllm-0.8.2-h20x8-r1-eager",
        description="vLLM 0.8.2, --enforce-eager, TP 8, DeepSeek-R1 FP8 on 8xH20-96G, as in the field report: "
        "max_num_seqs 256, max-num-batched-tokens 16384, no chunked prefill. Step costs and effective KV capacity "
        "fitted by launcher.sim.fit_profiles (residuals in fit-residuals.md).",
        base_ms=108.0, decode_seq_ms=0.06, prefill_token_ms=0.1, prefill_step_ms=50.0,
        max_num_seqs=256, max_batched_tokens=16384, kv_tokens=82592,
        schedule="prefill-first", chunked_prefill=False, **NATURAL,
    ),
    "sglang-h20x8-r1": Profile(
        name="sglang-h20x8-r1",
        description="SGLang ea52b45be1a7, CUDA graphs, TP 8, DeepSeek-R1 FP8 on 8xH20-96G, as in the field report: "
        "--chunked-prefill-size 4096, --mem-fraction-static 0.90. Step costs and effective KV capacity fitted by "
        "launcher.sim.fit_profiles (residuals in fit-residuals.md).",
        base_ms=38.0, decode_seq_ms=3.0, decode_seq_exp=0.7, prefill_token_ms=0.1, prefill_step_ms=20.0,
        max_num_seqs=1024, max_batched_tokens=4096, kv_tokens=86888,
        schedule="prefill-first", chunked_prefill=True, **NATURAL,
    ),
}


def _rounded(p: Profile) -> Profile:
    return p.replace(
        base_ms=round(p.base_ms, 3), decode_seq_ms=round(p.decode_seq_ms, 5), decode_seq_exp=round(p.decode_seq_exp, 4),
        prefill_token_ms=round(p.prefill_token_ms, 5), prefill_step_ms=round(p.prefill_step_ms, 3),
        kv_tokens=int(p.kv_tokens),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="do not fit; report the shipped profiles")
    ap.add_argument("--only", choices=sorted(FITTED), help="fit just this profile")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    sections = []
    ok = True
    for name, csv_name in FITTED.items():
        rows = load_table(SEED_DIR / csv_name)
        if args.check or (args.only and args.only != name):
            profile = load_profile(name)
        else:
            t0 = time.time()
            profile = _rounded(fit(STARTS[name], rows, PARAMS[name], rounds=args.rounds, log=sys.stderr))
            (PROFILE_DIR / f"{name}.json").write_text(profile.to_json(), encoding="utf-8")
            print(f"{name}: fitted in {time.time() - t0:.0f} s", file=sys.stderr)
        table = residual_table(profile, rows)
        sections.append(markdown(name, profile, table, f"launcher/sim/profiles/seed/{csv_name}"))
        for check, m, s, e in acceptance(table):
            print(f"{name}: {check}: measured {m:.1f} model {s:.1f} ({e * 100:+.1f}%)")
            ok = ok and abs(e) <= 0.15
    if not args.check:
        head = (
            "# Fit residuals of the sim's fitted profiles\n\n"
            "Written by `python -m launcher.sim.fit_profiles`. Each row is one burst of N requests (the field report's "
            "workload), measured on the real deployment vs replayed through `launcher.sim.engine.simulate`. "
            "The fit targets TPOT at low concurrency and the throughput plateau; TTFT in a burst is dominated by "
            "queueing and is reported, not fitted tightly.\n\n"
        )
        (PROFILE_DIR / "fit-residuals.md").write_text(head + "\n".join(sections), encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
