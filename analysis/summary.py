"""The summary table: the field report's columns, then the tails and failures it left out."""

from __future__ import annotations

import pandas as pd

from analysis import prefix_cache, sessions, telemetry, trace_replay
from analysis.cost import SUMMARY_COLUMNS as COST_COLUMNS
from analysis.energy import SUMMARY_COLUMNS as ENERGY_COLUMNS

# The field report's summary.csv, in its order and with its names, so its readers keep working.
REPORT_COLUMNS = {
    "concurrency": "concurrency",
    "mean_ttft_ms": "mean TTFT(ms)",
    "input_throughput": "input_throughput(tokens/s)",
    "output_throughput": "output_throughput(tokens/s)",
    "mean_tpot_ms": "mean TPOT(ms)",
    "mean_input_len": "mean_input_len",
    "mean_output_len": "mean_output_len",
}

EXTRA_COLUMNS = {
    "p50_ttft_ms": "p50 TTFT(ms)",
    "p99_ttft_ms": "p99 TTFT(ms)",
    "p50_tpot_ms": "p50 TPOT(ms)",
    "p99_tpot_ms": "p99 TPOT(ms)",
    "p50_itl_ms": "p50 ITL(ms)",
    "p99_itl_ms": "p99 ITL(ms)",
    "p50_e2el_ms": "p50 E2EL(ms)",
    "p99_e2el_ms": "p99 E2EL(ms)",
    "error_rate": "error_rate",
    "request_goodput": "goodput(req/s)",
    "request_throughput": "request_throughput(req/s)",
    "num_prompts": "num_prompts",
}

KEY_COLUMNS = {"label": "label", "input_len": "input_len", "output_len": "output_len"}

# Reasoning models: present when any run reasoned (a run without reasoning has TTFA = TTFT).
REASONING_COLUMNS = {
    "mean_ttfa_ms": "mean TTFA(ms)",
    "p99_ttfa_ms": "p99 TTFA(ms)",
    "mean_reasoning_time_ms": "mean reasoning time(ms)",
    "mean_answer_time_ms": "mean answer time(ms)",
    "mean_answer_tpot_ms": "mean answer TPOT(ms)",
    "total_reasoning_tokens": "reasoning_tokens",
    "total_answer_tokens": "answer_tokens",
    "no_answer": "no_answer",
}


def reasoning_columns(runs: pd.DataFrame) -> dict[str, str]:
    if "reasoning_requests" in runs and (pd.to_numeric(runs["reasoning_requests"], errors="coerce") > 0).any():
        return REASONING_COLUMNS
    return {}


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run with the report's columns first; figures a producer did not record are empty.

    Rows are ordered by label, then asked lengths, then concurrency, which is
    the order a reader scans a sweep in.
    """
    wanted = {**KEY_COLUMNS, **REPORT_COLUMNS, **EXTRA_COLUMNS, **reasoning_columns(runs), **telemetry.summary_columns(runs),
              **prefix_cache.summary_columns(runs), **sessions.summary_columns(runs),
              **trace_replay.summary_columns(runs)}
    wanted.update({k: v for k, v in {**ENERGY_COLUMNS, **COST_COLUMNS}.items() if k in runs.columns})
    frame = pd.DataFrame(index=runs.index)
    for src, name in wanted.items():
        # every column but the label is a number; a figure not recorded is NaN (empty in the
        # CSV, shown as absent in the report), never None or pd.NA rendered as text
        frame[name] = (runs[src] if src == "label" else pd.to_numeric(runs[src], errors="coerce")) \
            if src in runs.columns else float("nan")
    for src, low, high in ci_columns(runs):  # --repeat: the point's 95 % interval beside its figure
        frame[f"{wanted.get(src, src)} CI low"] = runs[low]
        frame[f"{wanted.get(src, src)} CI high"] = runs[high]
    if "repeats" in runs and (runs["repeats"] > 1).any():
        frame["repeats"] = runs["repeats"]
    frame = frame.sort_values(["label", "input_len", "output_len", "concurrency"], kind="stable", na_position="last")
    return frame.reset_index(drop=True)


CI_FIGURES = ("output_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "p99_e2el_ms")


def ci_columns(runs: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(figure, low, high) for the figures :func:`analysis.intervals.annotate` gave an interval."""
    return [(f, f"{f}_ci_low", f"{f}_ci_high") for f in CI_FIGURES
            if f"{f}_ci_low" in runs and runs[f"{f}_ci_low"].notna().any()]


def write_csv(table: pd.DataFrame, path: str) -> None:
    """Write the summary with two decimals, as the field report's collector did."""
    table.to_csv(path, index=False, float_format="%.2f")
