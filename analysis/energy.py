"""Energy per token from the GPUs' energy counters recorded with a run (``gpu_metrics``).

loadgen integrates each GPU's energy counter (NVML's total energy consumption, DCGM's
``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION``) over the point's window
(``loadgen.telemetry.timeline.energy``); a counter, unlike sampled power, misses no
spike between two samples. Here that energy becomes the figures a capacity planner
compares: joules per output token, output tokens per joule and goodput per kilowatt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SUMMARY_COLUMNS = {
    "gpu_count": "GPUs",
    "gpu_energy_j": "GPU energy(J)",
    "gpu_mean_power_w": "GPU power(W)",
    "j_per_output_token": "J/output token",
    "output_tokens_per_j": "output tokens/J",
    "goodput_per_kw": "goodput/kW(req/s)",
}


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return None
    return float(value)


def energy_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    """Energy columns of one result record; empty when it recorded no GPU energy."""
    gm = record.get("gpu_metrics")
    if not isinstance(gm, Mapping):
        return {}
    out: dict[str, Any] = {}
    gpus = gm.get("gpus")
    if isinstance(gpus, list) and gpus:
        out["gpu_count"] = len(gpus)
    summ: Mapping[str, Any] = gm["summary"] if isinstance(gm.get("summary"), Mapping) else {}
    joules, power = _positive(summ.get("energy_j")), _positive(summ.get("energy_mean_power_w"))
    if joules is None:
        return out
    out["gpu_energy_j"] = joules
    out["gpu_mean_power_w"] = power
    tokens = _positive(record.get("total_output_tokens"))
    if tokens is not None:
        out["j_per_output_token"] = joules / tokens
        out["output_tokens_per_j"] = tokens / joules
    goodput = record.get("request_goodput")
    if power is not None and isinstance(goodput, int | float) and not isinstance(goodput, bool):
        out["goodput_per_kw"] = float(goodput) / (power / 1000.0)
    return out
