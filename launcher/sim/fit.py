"""Fit a profile's step costs to a measured benchmark table, and report residuals.

The field report's tables (one burst of N requests, every request L tokens in and
up to L out, N from 1 to 1024) are replayed through the pure engine model on a
virtual clock; a derivative-free search adjusts the step costs until the model's
mean TPOT and output throughput match. The acceptance criteria are the two
figures a user reads first: TPOT at low concurrency (N <= 4) and the throughput
plateau (mean over N >= 256), each within 15 %.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from launcher.sim.engine import SimRequest, simulate
from launcher.sim.profiles import PROFILE_DIR, Profile

SEED_DIR = PROFILE_DIR / "seed"
TOLERANCE = 0.15
LOW_CONCURRENCY = 4
PLATEAU_FROM = 256

# Which measured table each fitted profile reproduces.
FITTED = {
    "vllm-0.8.2-h20x8-r1-eager": "results-vllm-0.8.2-h20x8-deepseek-r1-fp8.csv",
    "sglang-h20x8-r1": "results-sglang-ea52b45be1a7-h20x8-deepseek-r1-fp8.csv",
}


@dataclass(frozen=True, slots=True)
class Row:
    """One measured point: a burst of ``concurrency`` requests."""

    concurrency: int
    ttft_ms: float
    output_throughput: float
    tpot_ms: float
    input_len: int
    output_len: float


@dataclass(frozen=True, slots=True)
class Prediction:
    ttft_ms: float
    tpot_ms: float
    output_throughput: float


def load_table(path: Path | str) -> list[Row]:
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for rec in csv.DictReader(fh):
            rows.append(Row(
                concurrency=int(rec["concurrency"]),
                ttft_ms=float(rec["mean_ttft_ms"]),
                output_throughput=float(rec["output_throughput_tok_s"]),
                tpot_ms=float(rec["mean_tpot_ms"]),
                input_len=int(float(rec["mean_input_len"])),
                output_len=float(rec["mean_output_len"]),
            ))
    return rows


def burst(row: Row) -> list[SimRequest]:
    """The report's workload for one row: N requests at t=0. Output lengths are
    split between floor and ceil so their mean equals the measured mean (vLLM's
    run did not ignore EOS)."""
    n = row.concurrency
    low = math.floor(row.output_len)
    n_high = round((row.output_len - low) * n)
    return [SimRequest(0.0, row.input_len, low + (1 if i < n_high else 0)) for i in range(n)]


def predict(profile: Profile, row: Row) -> Prediction:
    """Mean TTFT, mean TPOT and output throughput as the benchmark computes them."""
    results = simulate(profile, burst(row))
    ttft = sum(r.ttft for r in results) / len(results)
    tpots = [r.tpot for r in results if r.tpot is not None]
    tpot = sum(tpots) / len(tpots) if tpots else 0.0
    duration = max(r.finish for r in results)
    total_out = sum(r.output_len for r in results)
    return Prediction(ttft * 1000, tpot * 1000, total_out / duration)


def residual_table(profile: Profile, rows: list[Row]) -> list[dict[str, float]]:
    out = []
    for row in rows:
        p = predict(profile, row)
        out.append({
            "in_out": f"{row.input_len}/{round(row.output_len) if row.output_len == int(row.output_len) else row.input_len}",
            "input_len": row.input_len,
            "concurrency": row.concurrency,
            "tpot_measured": row.tpot_ms,
            "tpot_model": p.tpot_ms,
            "tput_measured": row.output_throughput,
            "tput_model": p.output_throughput,
            "ttft_measured": row.ttft_ms,
            "ttft_model": p.ttft_ms,
        })
    return out


def acceptance(table: list[dict[str, float]]) -> list[tuple[str, float, float, float]]:
    """(check, measured, model, relative error) for the criteria the fit must meet."""
    checks = []
    for length in sorted({int(r["input_len"]) for r in table}):
        part = [r for r in table if r["input_len"] == length]
        low = [r for r in part if r["concurrency"] <= LOW_CONCURRENCY]
        m = sum(r["tpot_measured"] for r in low) / len(low)
        s = sum(r["tpot_model"] for r in low) / len(low)
        checks.append((f"{length}/{length} mean TPOT at N<={LOW_CONCURRENCY} (ms)", m, s, (s - m) / m))
        high = [r for r in part if r["concurrency"] >= PLATEAU_FROM]
        m = sum(r["tput_measured"] for r in high) / len(high)
        s = sum(r["tput_model"] for r in high) / len(high)
        checks.append((f"{length}/{length} output throughput plateau N>={PLATEAU_FROM} (tok/s)", m, s, (s - m) / m))
    return checks


def _loss(profile: Profile, rows: list[Row]) -> float:
    table = residual_table(profile, rows)
    loss = 0.0
    for _check, m, s, _err in acceptance(table):
        loss += 4.0 * math.log(s / m) ** 2
    for r in table:  # the shape in between matters too, less
        loss += 0.5 * math.log(r["tpot_model"] / r["tpot_measured"]) ** 2 / len(table)
        loss += 0.5 * math.log(r["tput_model"] / r["tput_measured"]) ** 2 / len(table)
        loss += 0.1 * math.log(max(r["ttft_model"], 1e-3) / r["ttft_measured"]) ** 2 / len(table)
    return loss


FIT_PARAMS = ("base_ms", "decode_seq_ms", "prefill_token_ms", "prefill_step_ms", "kv_tokens")


def fit(start: Profile, rows: list[Row], params: tuple[str, ...] = FIT_PARAMS, rounds: int = 6,
        log: object = None) -> Profile:
    """Coordinate search in log space: each round tries scaling every parameter up
    and down by a shrinking factor and keeps what lowers the loss. Slow but
    dependency-free and deterministic."""
    best = start
    best_loss = _loss(best, rows)
    factor = 2.0
    for rnd in range(rounds):
        improved = True
        while improved:
            improved = False
            for key in params:
                for direction in (factor, 1.0 / factor):
                    value = getattr(best, key) * direction
                    if key == "kv_tokens":
                        value = int(round(value))
                    if value <= 0 or (key == "decode_seq_exp" and value > 1.0):
                        continue
                    cand = best.replace(**{key: value})
                    loss = _loss(cand, rows)
                    if loss < best_loss - 1e-9:
                        best, best_loss, improved = cand, loss, True
        if log:
            print(f"round {rnd}: factor {factor:.3f} loss {best_loss:.5f}", file=log)  # type: ignore[arg-type]
        factor = math.sqrt(factor)
    return best


def markdown(name: str, profile: Profile, table: list[dict[str, float]], source: str) -> str:
    lines = [
        f"## {name}",
        "",
        f"Measured: `{source}` (field report, 8xH20, DeepSeek-R1 FP8). Model: `launcher/sim/profiles/{name}.json`, "
        "driven with the same bursts on a virtual clock.",
        "",
        "| in/out | N | TPOT meas (ms) | TPOT model | err | tput meas (tok/s) | tput model | err | TTFT meas (ms) | TTFT model | err |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        def err(a: float, b: float) -> str:
            return f"{(b - a) / a * 100:+.0f}%"

        lines.append(
            f"| {r['input_len']}/{r['input_len']} | {r['concurrency']} | {r['tpot_measured']:.1f} | {r['tpot_model']:.1f} "
            f"| {err(r['tpot_measured'], r['tpot_model'])} | {r['tput_measured']:.0f} | {r['tput_model']:.0f} "
            f"| {err(r['tput_measured'], r['tput_model'])} | {r['ttft_measured']:.0f} | {r['ttft_model']:.0f} "
            f"| {err(r['ttft_measured'], r['ttft_model'])} |"
        )
    lines += ["", "Acceptance (within 15%):", ""]
    for check, m, s, e in acceptance(table):
        lines.append(f"- {check}: measured {m:.1f}, model {s:.1f}, {e * 100:+.1f}% {'OK' if abs(e) <= TOLERANCE else 'FAIL'}")
    return "\n".join(lines) + "\n"
