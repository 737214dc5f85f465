"""Dollars per million tokens from a GPU-hour price (``loadgen-report --gpu-hour-price``).

A point that sustains T tokens/s on G GPUs rented at P $/GPU-hour costs
P × G / 3600 $/s, so a million tokens cost P × G / 3600 / T × 10⁶ $. The GPU count
is ``--gpus`` when given, else what the run recorded: the GPUs its telemetry saw, or
the tensor-parallel size of its launch plan. At the capacity ``loadgen search`` found
(a request rate at which every SLO held) the same sum gives the cost at the SLO.
"""

from __future__ import annotations

import math

import pandas as pd

SUMMARY_COLUMNS = {
    "usd_per_m_output_tokens": "$/M output tokens",
    "usd_per_m_total_tokens": "$/M total tokens",
}


class CostError(ValueError):
    """A price or GPU count that cannot give a cost; the message says what to pass."""


def per_million(price_per_gpu_hour: float, gpus: float, tokens_per_s: float) -> float:
    """$ per million tokens at ``tokens_per_s`` on ``gpus`` GPUs; NaN when the rate is not positive."""
    if not (tokens_per_s > 0) or not math.isfinite(tokens_per_s):
        return math.nan
    return price_per_gpu_hour * gpus / 3600.0 / tokens_per_s * 1e6


def _gpus(runs: pd.DataFrame, gpus: int | None) -> pd.Series:
    if gpus is not None:
        return pd.Series(float(gpus), index=runs.index)
    found = pd.Series(math.nan, index=runs.index)
    for col in ("gpu_count", "engine_tensor_parallel"):
        if col in runs:
            found = found.fillna(pd.to_numeric(runs[col], errors="coerce"))
    return found


def annotate(runs: pd.DataFrame, price_per_gpu_hour: float, gpus: int | None = None) -> pd.DataFrame:
    """``runs`` plus ``gpus`` and the $/M-token columns. Raises :class:`CostError` when a run's
    GPU count is unknown and ``gpus`` was not given."""
    if not (price_per_gpu_hour > 0 and math.isfinite(price_per_gpu_hour)):
        raise CostError(f"--gpu-hour-price {price_per_gpu_hour:g} is not a positive price; give e.g. 2.5")
    if gpus is not None and gpus < 1:
        raise CostError(f"--gpus {gpus} is not a GPU count; give 1 or more")
    out = runs.copy()
    out["gpus"] = _gpus(runs, gpus)
    unknown = out["gpus"].isna()
    if unknown.any():
        name = out.loc[unknown, "label"].iloc[0] if "label" in out else "a run"
        raise CostError(f"the GPU count of '{name}' is not recorded (no GPU telemetry or launch plan); "
                        "pass --gpus N")
    for col, figure in (("usd_per_m_output_tokens", "output_throughput"),
                        ("usd_per_m_total_tokens", "total_token_throughput")):
        rate = pd.to_numeric(out[figure], errors="coerce") if figure in out else pd.Series(math.nan, index=out.index)
        out[col] = [per_million(price_per_gpu_hour, g, r) for g, r in zip(out["gpus"], rate, strict=True)]
    return out


def capacity_cost(table: pd.DataFrame, price_per_gpu_hour: float, gpus: int | None = None) -> pd.DataFrame:
    """The capacity table (``analysis.capacity.load_capacities``) plus ``$/M output tokens at SLO``:
    at a rate capacity, output tokens/s = requests/s × output length. Concurrency capacities get none.
    The GPU count: ``gpus``, else each record's launch plan (its tensor parallel size); raises
    :class:`CostError` when neither says."""
    out = table.copy()
    out["gpus"] = _gpus(out, gpus) if gpus is not None else pd.to_numeric(out.get("gpus"), errors="coerce")
    unknown = out["gpus"].isna()
    if unknown.any():
        raise CostError(f"the GPU count of '{out['label'][unknown].iloc[0]}' is not recorded (no launch plan); "
                        "pass --gpus N")
    costs = []
    for _, row in out.iterrows():
        rate = pd.to_numeric(row.get("capacity"), errors="coerce") if row.get("over") == "rate" else math.nan
        length = pd.to_numeric(row.get("output_len"), errors="coerce")
        costs.append(per_million(price_per_gpu_hour, row["gpus"], float(rate) * float(length)))
    out["$/M output tokens at SLO"] = costs
    return out
