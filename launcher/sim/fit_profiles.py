"""Fit the sim's engine profiles to the field report's measured tables, and check them.

    python -m launcher.sim.fit_profiles            # fit on 128/128, check on 256/256, and back; write
                                                   # the profiles and fit-residuals.md (minutes)
    python -m launcher.sim.fit_profiles --check    # residuals and pass/fail of the shipped profiles
    python -m launcher.sim.fit_profiles --report   # rewrite fit-residuals.md without refitting
    python -m launcher.sim.fit_profiles --profile sglang-h20x8-r1   # refit one profile (both ways)

Exit codes: 0 every criterion of the shipped profiles holds, 1 at least one fails.
The capacities (slots, per-step token budget, schedule, CUDA-graph sizes) come from
the report's command lines and the engines' defaults; the costs and the effective KV
capacity are fitted on one in/out setting only, so the other one is a held-out check.
"""

from __future__ import annotations

import argparse
import sys
import time

from launcher.sim.profile_fit import (
    FITTED,
    SEED_DIR,
    Row,
    criteria,
    fit,
    load_excluded,
    load_table,
    loss,
    markdown,
    residual_table,
)
from launcher.sim.profiles import PROFILE_DIR, Profile, load_profile

FIT_ON = 128  # the in/out setting the shipped profiles are fitted on; the other is held out
RESIDUALS = PROFILE_DIR / "fit-residuals.md"
# The same fit the other way round (on the other setting): kept as data so that the
# check "and back" is repeatable without refitting. Not a shipped profile.
REVERSE_DIR = PROFILE_DIR / "fit-reverse"

# The model's own habit of stopping early (vLLM's run did not ignore EOS: ~119 of
# 128 and ~226 of 256 tokens on average): a log-normal natural length with these
# parameters gives those two means.
NATURAL = {"natural_len_median": 1440.0, "natural_len_sigma": 2.1}
# SGLang's default CUDA-graph batch sizes at the report's commit: 1, 2, 4, then every 8 up to 160.
SGLANG_GRAPHS = (1, 2, 4, *range(8, 161, 8))
# SGLang's own KV sizing (ModelRunner.profile_max_num_token) for --mem-fraction-static 0.90 on
# 8 x H20-96G with DeepSeek-R1's bf16 MLA cache (576 values x 61 layers x 2 bytes per token): the
# most the pool can hold. The fit scans fractions of it (the costs refit at each) and keeps the
# one that fits the fitted setting best: the pool the admission rule effectively works with.
SGLANG_MEMORY_KV = 86_888
# vLLM's own sizing for --gpu-memory-utilization 0.95 the same way (docs/sim.md): an upper bound
# resting on a guessed activation peak. Its table's plateaus sit far below it, so the scan covers
# a quarter to two fifths of it, in steps of 2.5 %.
VLLM_MEMORY_KV = 82_592
KV_SCAN = {"sglang-h20x8-r1": (1.0, 0.9, 0.8, 0.75, 0.7, 0.65, 0.6),
           "vllm-0.8.2-h20x8-r1-eager": (0.4, 0.375, 0.35, 0.325, 0.3, 0.275, 0.25)}
SCAN_ROUNDS = {"sglang-h20x8-r1": 2, "vllm-0.8.2-h20x8-r1-eager": 1}  # cost refits per scanned capacity
# vLLM 0.8's V1 KV manager with DeepSeek's MLA on FlashMLA: blocks of 64 tokens, and one block
# preallocated with every allocation (num_preallocate_tokens 64). Kept, not fitted.
VLLM_KV_BLOCK = {"kv_block_tokens": 64, "kv_preallocate_blocks": 1}
# The performance-relevant flags of the report's two server command lines, kept in each profile as data.
ENGINE_ARGS = {
    "sglang-h20x8-r1": ("--tensor-parallel-size", "8", "--quantization", "fp8", "--mem-fraction-static", "0.90",
                        "--context-length", "65536", "--chunked-prefill-size", "4096"),
    "vllm-0.8.2-h20x8-r1-eager": ("--tensor-parallel-size", "8", "--gpu-memory-utilization", "0.95",
                                  "--max-num-seqs", "256", "--max-num-batched-tokens", "16384",
                                  "--max-model-len", "4096", "--max-seq-len-to-capture", "16384",
                                  "--enable-chunked-prefill=False", "--enforce-eager"),
}

# Starting points and what each fit searches. vLLM's base cost is not fitted: every vLLM step
# is eager, so base_ms and eager_step_ms only count as their sum there; it takes SGLang's fitted
# floor (same GPUs, model and TP degree) and what its steps cost on top of it shows up as
# eager_step_ms, the price of --enforce-eager.
STARTS = {
    "sglang-h20x8-r1": Profile(
        name="sglang-h20x8-r1",
        description="SGLang ea52b45be1a7, CUDA graphs, TP 8, DeepSeek-R1 FP8 on 8xH20-96G, as in the field report: "
        "--chunked-prefill-size 4096 (prefill-first), --mem-fraction-static 0.90, default CUDA-graph batch sizes; "
        "SGLang's admission (kv_allocation ratio). Costs fitted, and the KV pool chosen among fractions of the "
        "memory-derived 86,888 tokens, on the 128/128 table by launcher.sim.fit_profiles (residuals, held-out "
        "256/256 first, in fit-residuals.md).",
        base_ms=38.0, decode_seq_ms=0.05, decode_doubling_ms=15.0, decode_knee=4.0, decode_ctx_ms=0.3,
        eager_step_ms=30.0, prefill_token_ms=2.0, prefill_token_exp=0.7, prefill_step_ms=120.0,
        max_num_seqs=1024, max_batched_tokens=4096, kv_tokens=SGLANG_MEMORY_KV, kv_allocation="ratio",
        graph_batch_sizes=SGLANG_GRAPHS, schedule="prefill-first", chunked_prefill=True, tensor_parallel=8,
        engine_args=ENGINE_ARGS["sglang-h20x8-r1"], **NATURAL,
    ),
    "vllm-0.8.2-h20x8-r1-eager": Profile(
        name="vllm-0.8.2-h20x8-r1-eager",
        description="vLLM 0.8.2, --enforce-eager, TP 8, DeepSeek-R1 FP8 on 8xH20-96G, as in the field report: "
        "max_num_seqs 256, max-num-batched-tokens 16384; the V1 scheduler's mixed steps (every running decode "
        "plus prompt chunks up to the budget in one step; V1 ignores --enable-chunked-prefill=False); V1's KV "
        "manager (kv_allocation lazy: blocks of 64 tokens grown as needed, one more preallocated with each "
        "allocation, the latest request preempted when a decode finds none). Costs fitted, and the KV pool "
        "chosen among fractions of the memory-derived 82,592 tokens, on the 128/128 table by "
        "launcher.sim.fit_profiles (residuals, held-out 256/256 first, in fit-residuals.md).",
        base_ms=38.0, eager_step_ms=72.0, decode_seq_ms=0.01, decode_doubling_ms=2.0, decode_knee=4.0,
        decode_ctx_ms=0.3, prefill_token_ms=0.06, prefill_step_ms=20.0,
        max_num_seqs=256, max_batched_tokens=16384, kv_tokens=VLLM_MEMORY_KV, kv_allocation="lazy",
        **VLLM_KV_BLOCK, schedule="mixed", chunked_prefill=True, tensor_parallel=8,
        engine_args=ENGINE_ARGS["vllm-0.8.2-h20x8-r1-eager"], **NATURAL,
    ),
}
_COMMON = ("decode_seq_ms", "decode_doubling_ms", "decode_knee", "decode_ctx_ms", "eager_step_ms",
           "prefill_token_ms", "prefill_token_exp", "prefill_step_ms", "kv_tokens")
# vLLM's eager TPOT is nearly flat in the batch and its TTFT nearly linear in the prompt
# tokens: its knee and prefill exponent stay at their defaults (fewer knobs, same fit).
# KV capacities are scanned (KV_SCAN), not searched. SGLang's per-step floor base_ms is fitted
# (an engine's floor is its own); vLLM takes SGLang's (see STARTS).
_SCANNED = ("kv_tokens",)
PARAMS = {"sglang-h20x8-r1": ("base_ms", *(k for k in _COMMON if k not in _SCANNED)),
          "vllm-0.8.2-h20x8-r1-eager": tuple(k for k in _COMMON
                                             if k not in ("decode_knee", "prefill_token_exp", *_SCANNED))}
ORDER = ("sglang-h20x8-r1", "vllm-0.8.2-h20x8-r1-eager")  # vLLM borrows SGLang's base_ms
ROUNDS = {"sglang-h20x8-r1": 4, "vllm-0.8.2-h20x8-r1-eager": 3}


def _rounded(p: Profile) -> Profile:
    return p.replace(**{k: (int(getattr(p, k)) if k == "kv_tokens" else round(getattr(p, k), 4))
                        for k in ("base_ms", *_COMMON)})


def split(rows: list[Row], fit_on: int) -> tuple[list[Row], list[Row]]:
    """(rows fitted on, rows held out)."""
    return [r for r in rows if r.input_len == fit_on], [r for r in rows if r.input_len != fit_on]


def fit_one(name: str, rows: list[Row], fit_on: int, base_ms: float, rounds: int) -> Profile:
    start = STARTS[name] if name == ORDER[0] else STARTS[name].replace(base_ms=base_ms)
    if fit_on != FIT_ON:
        start = start.replace(description=f"{name} fitted on the {fit_on}/{fit_on} table instead, to check the fit "
                              f"the other way round (not a shipped profile).")
    train, _ = split(rows, fit_on)
    excluded = load_excluded(name)[0]
    if name in KV_SCAN:
        block = start.kv_block_tokens  # a pool of whole blocks
        scanned = [fit(start.replace(kv_tokens=int(start.kv_tokens * f) // block * block), train, PARAMS[name],
                       excluded, rounds=SCAN_ROUNDS[name]) for f in KV_SCAN[name]]
        start = min(scanned, key=lambda p: loss(p, train, excluded))
        print(f"kv_tokens scan: {start.kv_tokens} fits {fit_on}/{fit_on} best", file=sys.stderr)
    return _rounded(fit(start, train, PARAMS[name], excluded, rounds=rounds, log=sys.stderr))


def section(name: str, profile: Profile, back: Profile, rows: list[Row], fit_on: int) -> tuple[str, bool]:
    """The residuals of one profile (held-out table first) and whether its criteria hold."""
    train, held = split(rows, fit_on)
    other = held[0].input_len
    excluded, reasons = load_excluded(name)
    held_table, train_table = residual_table(profile, held, excluded), residual_table(profile, train, excluded)
    reverse = criteria(residual_table(back, split(rows, other)[1], excluded))
    parts = [
        f"## {name}\n\nMeasured: `launcher/sim/profiles/seed/{FITTED[name]}`. Model: "
        f"`launcher/sim/profiles/{name}.json`, fitted on {fit_on}/{fit_on} only.\n",
        markdown(f"Held out: {other}/{other} (not seen by the fit)", held_table),
        markdown(f"Fitted: {fit_on}/{fit_on}", train_table),
        f"### The other way round: fitted on {other}/{other} (`{REVERSE_DIR.name}/{name}.json`), "
        f"checked on {fit_on}/{fit_on}\n\n" + "\n".join(f"- {c.describe()}" for c in reverse) + "\n",
    ]
    if reasons:
        parts.append("### Points not held to the targets (`seed/excluded.json`)\n\n"
                     + "\n".join(f"- {line}" for line in reasons) + "\n")
    ok = all(c.ok for c in criteria(held_table) + criteria(train_table))
    return "\n".join(parts), ok


HEAD = (
    "# Fit residuals of the sim's fitted profiles\n\n"
    "Written by `python -m launcher.sim.fit_profiles`. Each row is one burst of N requests (the field "
    "report's workload), measured on the real deployment vs replayed through `launcher.sim.engine.simulate`, "
    f"the model the running sim steps through. Each profile is fitted on the {FIT_ON}/{FIT_ON} table only; "
    "the other table is a held-out check and comes first. Targets per setting: TPOT and output throughput "
    "within +-10 % at >= 90 % of the points and +-15 % at every point; TTFT within +-30 % at >= 80 % of the "
    "points with N >= 8.\n\n"
    "**Where a target is missed, and why** (not hidden by refitting on the held-out table):\n\n"
    "- *vLLM, held out 256/256: TTFT within +-30 % at 6 of 9 points with N >= 8 (8 needed); it is 39-51 % low at "
    "N = 8-32.* One cost per prompt token cannot give both settings: 2,048 prompt tokens took 311 ms as 16 x 128 "
    "and 542 ms as 8 x 256 (4,096: 406 vs 805 ms). Attention is under 1 % of a prefill's work at these lengths "
    "(~5 MFLOP per token pair across the 61 layers against ~74 GFLOP per token for the 37 B activated "
    "parameters), so no attention term explains it, and the 128/128 table cannot identify any other term growing "
    "faster than the prompt. The same table is noisy there: N = 4 (578 ms) is above N = 8 (542 ms), N = 64 "
    "(1,037 ms, twice N = 32's prompt tokens) below N = 32 (1,155 ms). From N = 64 up TTFT is within 24 %, and "
    "TPOT and throughput hold at every point.\n"
    "- *vLLM KV:* vLLM 0.8's V1 KV manager holds a request's KV in 64-token blocks (FlashMLA) and hands out one "
    "more block with every allocation (`kv_block_tokens`, `kv_preallocate_blocks`, kept, not fitted): a 128/128 "
    "request holds 256 tokens from admission on, a 256/256 one 384 then 512. One pool then runs ~1.75 times as "
    "many 128/128 requests as 256/256 ones, as the report's plateaus show (~100 and ~64 running, Little's law). "
    "The pool (28,864 tokens, 35 % of vLLM's memory-derived 82,592) is chosen on 128/128 only.\n"
    "- *SGLang:* every target holds. Its per-step floor `base_ms` is fitted (41.4 ms; vLLM takes it, and the rest "
    "of vLLM's step is its `eager_step_ms`). A fresh fit reproduces the shipped profile to the stored digits.\n"
    "- *The other way round* (fitted on 256/256, checked on 128/128): vLLM holds every target but TTFT (6 of 9, "
    "up to +73 %: the same per-token prefill cost, now too high for 128-token prompts); its fit picks the same KV "
    "pool (28,864 tokens). SGLang's reverse fit holds every target but one point's throughput: 128/128 N = 512 is "
    "15.1 % high, 0.1 % over the +-15 % bound, where the measured 1,017 tok/s dips below both N = 256 (1,127) and "
    "N = 1,024 (1,101).\n"
    "- *SGLang KV:* the model admits as SGLang does (a decaying share of the running outputs still to come). The "
    "pool SGLang's memory sizing gives, 86,888 tokens, admits ~330 requests at 128/128 N = 1,024 where the report's "
    "figures give ~230 (Little's law), so the fit keeps the fraction of it that fits 128/128 best (70 %; the fit "
    "on 256/256 picks 75 %).\n"
    "- *TTFT below N = 8 is not a target.*\n\n"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="do not fit; print residuals and criteria of the stored profiles")
    mode.add_argument("--report", action="store_true",
                      help="do not fit; rewrite fit-residuals.md from the stored profiles")
    ap.add_argument("--profile", choices=ORDER, help="fit only this profile (both ways); the other one's stored "
                    "files stay and are checked")
    ap.add_argument("--rounds", type=int, help="search rounds, each with a finer step (default: 4 for SGLang, "
                    "3 for vLLM, as the shipped profiles were fitted)")
    args = ap.parse_args(argv)
    sections = []
    ok = True
    base = {FIT_ON: STARTS[ORDER[0]].base_ms}
    for name in ORDER:
        rows = load_table(SEED_DIR / FITTED[name])
        other = next(r.input_len for r in rows if r.input_len != FIT_ON)
        if args.check or args.report or (args.profile and args.profile != name):
            profile, back = load_profile(name), load_profile(str(REVERSE_DIR / f"{name}.json"))
        else:
            t0 = time.time()
            rounds = args.rounds or ROUNDS[name]
            profile = fit_one(name, rows, FIT_ON, base.get(FIT_ON, 0.0), rounds)
            back = fit_one(name, rows, other, base.get(other, 0.0), rounds)
            (PROFILE_DIR / f"{name}.json").write_text(profile.to_json(), encoding="utf-8")
            REVERSE_DIR.mkdir(exist_ok=True)
            (REVERSE_DIR / f"{name}.json").write_text(back.to_json(), encoding="utf-8")
            print(f"{name}: fitted both ways in {time.time() - t0:.0f} s", file=sys.stderr)
        if name == ORDER[0]:
            base = {FIT_ON: profile.base_ms, other: back.base_ms}
        text, good = section(name, profile, back, rows, FIT_ON)
        print(text)
        sections.append(text)
        ok = ok and good
    if not args.check:
        RESIDUALS.write_text(HEAD + "\n".join(sections), encoding="utf-8")
    print("all criteria hold" if ok else "some criteria FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
