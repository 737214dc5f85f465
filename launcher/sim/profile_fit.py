"""Fit a profile's costs to a measured benchmark table, and judge the fit.

The field report's tables (one burst of N requests, every request L tokens in and
up to L out, N from 1 to 1024) are replayed through the pure engine model on a
virtual clock (the same ``Engine`` the server steps); a derivative-free search
adjusts the profile's costs until the model's mean TPOT, output throughput and
TTFT match. The targets (``CRITERIA``) hold per in/out setting, so a profile
fitted on one setting is checked on the other.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from launcher.sim.engine import SimRequest, simulate
from launcher.sim.profiles import PROFILE_DIR, Profile

SEED_DIR = PROFILE_DIR / "seed"

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


def output_lengths(n: int, cap: int, mean: float, sigma: float) -> list[int]:
    """N output lengths capped at ``cap`` whose sum is ``round(mean x N)``: the
    quantiles of a log-normal (spread ``sigma``, the profile's own habit of stopping
    early) with its median solved for that mean. A run that did not ignore EOS has
    a few long requests that set the burst's duration, not N requests at the mean."""
    total = round(mean * n)
    if sigma <= 0 or total >= n * cap:
        low, extra = divmod(min(total, n * cap), n)
        return [low + (1 if i < extra else 0) for i in range(n)]
    z = [NormalDist().inv_cdf((i + 0.5) / n) for i in range(n)]

    def lengths(mu: float) -> list[int]:
        return [min(cap, max(1, round(math.exp(mu + sigma * zi)))) for zi in z]

    lo, hi = -10.0, math.log(cap) + 10 * sigma
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(lengths(mid)) < total else (lo, mid)
    out = lengths(hi)
    i = 0
    while sum(out) != total and i < 10 * n:  # exact sum: nudge the longest uncapped requests
        j = max((k for k in range(n) if 1 < out[k] < cap), key=lambda k: out[k], default=None)
        if j is None:
            break
        out[j] += 1 if sum(out) < total else -1
        i += 1
    return out


def burst(row: Row, sigma: float = 0.0) -> list[SimRequest]:
    """The report's workload for one row: N requests at t=0, each asking for as many
    tokens as it sends (the report's L/L), with the measured mean output length."""
    lens = output_lengths(row.concurrency, row.input_len, row.output_len, sigma)
    return [SimRequest(0.0, row.input_len, n) for n in lens]


def predict(profile: Profile, row: Row) -> Prediction:
    """Mean TTFT, mean TPOT and output throughput as the benchmark computes them."""
    results = simulate(profile, burst(row, profile.natural_len_sigma))
    ttft = sum(r.ttft for r in results) / len(results)
    tpots = [r.tpot for r in results if r.tpot is not None]
    tpot = sum(tpots) / len(tpots) if tpots else 0.0
    duration = max(r.finish for r in results)
    total_out = sum(r.output_len for r in results)
    return Prediction(ttft * 1000, tpot * 1000, total_out / duration)


Excluded = dict[tuple[int, int], tuple[str, ...]]  # (input_len, N) -> metrics not held to the targets


def load_excluded(name: str) -> tuple[Excluded, list[str]]:
    """The measured points a profile is not held to, from ``seed/excluded.json``, and why.

    The report's tables are single bursts and noisy; a point that contradicts its
    neighbours (TTFT falling as the burst doubles) is listed there with the reason,
    rather than bending the model to it. The residual file shows every such point."""
    data = json.loads((SEED_DIR / "excluded.json").read_text(encoding="utf-8")).get(name, [])
    excluded = {(int(e["setting"]), int(e["concurrency"])): tuple(e["metrics"]) for e in data}
    reasons = [f"{e['setting']}/{e['setting']} N = {e['concurrency']} ({', '.join(METRIC_NAMES[m] for m in e['metrics'])}):"
               f" {e['why']}" for e in data]
    return excluded, reasons


def residual_table(profile: Profile, rows: list[Row], excluded: Excluded | None = None) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        p = predict(profile, row)
        out.append({
            "input_len": row.input_len,
            "concurrency": row.concurrency,
            "tpot_measured": row.tpot_ms,
            "tpot_model": p.tpot_ms,
            "tput_measured": row.output_throughput,
            "tput_model": p.output_throughput,
            "ttft_measured": row.ttft_ms,
            "ttft_model": p.ttft_ms,
            "excluded": (excluded or {}).get((row.input_len, row.concurrency), ()),
        })
    return out


@dataclass(frozen=True, slots=True)
class Criterion:
    """One acceptance criterion on one in/out setting of a residual table."""

    setting: int  # input length (= requested output length) of the rows it covers
    metric: str  # tpot | tput | ttft
    tolerance: float  # relative error allowed
    share: float  # fraction of the covered points that must be within it
    within: int
    points: int
    worst: float  # largest absolute relative error among the covered points

    @property
    def ok(self) -> bool:
        return self.within >= math.ceil(self.share * self.points - 1e-9)

    def describe(self) -> str:
        where = " at N>=8" if self.metric == "ttft" else ""
        need = "every point" if self.share >= 1.0 else f">= {self.share:.0%} of points"
        return (f"{self.setting}/{self.setting} {METRIC_NAMES[self.metric]} within +-{self.tolerance:.0%}{where} "
                f"at {need}: {self.within}/{self.points} (worst {self.worst:+.1%}) {'OK' if self.ok else 'FAIL'}")


METRIC_NAMES = {"tpot": "TPOT", "tput": "output throughput", "ttft": "TTFT"}
# (metric, tolerance, required share of points, smallest N covered): the targets of the fit.
CRITERIA = (
    ("tpot", 0.10, 0.90, 1), ("tpot", 0.15, 1.00, 1),
    ("tput", 0.10, 0.90, 1), ("tput", 0.15, 1.00, 1),
    ("ttft", 0.30, 0.80, 8),
)


def error(r: dict[str, Any], metric: str) -> float:
    """Relative error of the model against the measurement for one row."""
    return (r[f"{metric}_model"] - r[f"{metric}_measured"]) / r[f"{metric}_measured"]


def criteria(table: list[dict[str, Any]]) -> list[Criterion]:
    """Every target of the fit, per in/out setting, evaluated on a residual table."""
    out = []
    for length in sorted({int(r["input_len"]) for r in table}):
        for metric, tol, share, min_n in CRITERIA:
            errs = [error(r, metric) for r in table
                    if r["input_len"] == length and r["concurrency"] >= min_n and metric not in r["excluded"]]
            worst = max(errs, key=abs) if errs else 0.0
            out.append(Criterion(length, metric, tol, share, sum(abs(e) <= tol for e in errs), len(errs), worst))
    return out


def _soft(err: float, scale: float) -> float:
    """Soft-L1 penalty: quadratic inside the tolerance, linear outside, so that a
    few noisy measurements pull the fit less than a squared error would."""
    return math.sqrt(1.0 + (err / scale) ** 2) - 1.0


def loss(profile: Profile, rows: list[Row], excluded: Excluded | None = None) -> float:
    """What the fit minimises: log errors of TPOT and throughput at every point and of
    TTFT from N = 8 up (half weight), each scaled by its tolerance; excluded points
    do not pull."""
    total = 0.0
    for r in residual_table(profile, rows, excluded):
        skip = r["excluded"]
        if "tpot" not in skip:
            total += _soft(math.log(r["tpot_model"] / r["tpot_measured"]), 0.10)
        if "tput" not in skip:
            total += _soft(math.log(r["tput_model"] / r["tput_measured"]), 0.10)
        if r["concurrency"] >= 8 and "ttft" not in skip:
            total += 0.5 * _soft(math.log(max(r["ttft_model"], 1e-3) / r["ttft_measured"]), 0.30)
    return total / len(rows)


def fit(start: Profile, rows: list[Row], params: tuple[str, ...], excluded: Excluded | None = None,
        rounds: int = 4, log: object = None) -> Profile:
    """Coordinate search in log space: each round tries scaling every parameter up
    and down by a shrinking factor and keeps what lowers the loss. Deterministic and
    dependency-free; a few hundred model runs."""
    best = start
    best_loss = loss(best, rows, excluded)
    factor = 2.0
    for rnd in range(rounds):
        improved = True
        while improved:
            improved = False
            for key in params:
                # exponents and the per-step floor move gently: every step time depends on them
                step = factor ** 0.25 if key.endswith("_exp") or key == "base_ms" else factor
                for direction in (step, 1.0 / step):
                    value = getattr(best, key) * direction
                    if key == "kv_tokens":
                        value = int(round(value))
                    if value <= 0 or (key.endswith("_exp") and value > 1.0) or (key == "decode_knee" and value < 1):
                        continue
                    cand = best.replace(**{key: value})
                    try:
                        cand_loss = loss(cand, rows, excluded)
                    except RuntimeError:  # e.g. a KV cache too small for one request
                        continue
                    if cand_loss < best_loss - 1e-9:
                        best, best_loss, improved = cand, cand_loss, True
        if log:
            values = ", ".join(f"{k}={getattr(best, k):.5g}" for k in params)
            print(f"round {rnd}: factor {factor:.3f} loss {best_loss:.5f}: {values}", file=log, flush=True)  # type: ignore[arg-type]
        factor = math.sqrt(factor)
    return best


def markdown(title: str, table: list[dict[str, Any]]) -> str:
    """One residual table and its criteria, as the residuals file shows them."""
    lines = [
        f"### {title}",
        "",
        "| in/out | N | TPOT meas (ms) | TPOT model | err | tput meas (tok/s) | tput model | err | TTFT meas (ms) | TTFT model | err |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        def err(metric: str, r: dict[str, Any] = r) -> str:
            return f"{error(r, metric):+.0%}" + (" (excluded)" if metric in r["excluded"] else "")

        lines.append(
            f"| {r['input_len']}/{r['input_len']} | {r['concurrency']} | {r['tpot_measured']:.1f} | {r['tpot_model']:.1f} "
            f"| {err('tpot')} | {r['tput_measured']:.0f} | {r['tput_model']:.0f} "
            f"| {err('tput')} | {r['ttft_measured']:.0f} | {r['ttft_model']:.0f} | {err('ttft')} |"
        )
    lines += ["", *[f"- {c.describe()}" for c in criteria(table)]]
    return "\n".join(lines) + "\n"
