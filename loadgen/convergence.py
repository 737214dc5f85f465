"""``--repeat auto``: repeat a point until the figures that matter are known well enough.

After each run of a point (from the third on) the 95 % interval of the mean of each
chosen figure across the runs so far is computed; the point is done when every
interval's half-width is at most ``--repeat-width`` of its mean, or after
``--repeat-max`` runs. The interval is Student's t (mean ± t₀.₉₇₅,K−1 · s/√K): with
three to ten runs it is honest where a bootstrap over so few runs is too narrow
(docs/analysis.md#confidence-intervals), and it is what AIPerf's convergence mode
uses too. Pure functions of the runs' result dicts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from loadgen.errors import LoadgenError

MIN_RUNS = 3
DEFAULT_METRICS = ("output_throughput", "p99_ttft_ms")
# t quantiles (0.975) by degrees of freedom; beyond the table the normal 1.96 is within 4 %
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
         2.042)
_FIGURE = re.compile(r"^((mean|median|std|p\d+(\.\d+)?)_(ttft|tpot|itl|e2el|queue)_ms|"
                     r"(output|input|total_token|request)_throughput|total_throughput|request_goodput)$")


class RepeatError(LoadgenError):
    """A bad --repeat/--repeat-width/--repeat-metric; the message is one line with the fix."""

    kind = "config"


def parse_repeat(text: str | int) -> int | None:
    """``--repeat``: a count K ≥ 1, or ``auto`` (None)."""
    if isinstance(text, int):
        count = text
    elif str(text).strip().lower() == "auto":
        return None
    else:
        try:
            count = int(str(text).strip())
        except ValueError:
            raise RepeatError(f"--repeat '{text}' is not a count or 'auto'; give e.g. --repeat 5 or --repeat auto") \
                from None
    if count < 1:
        raise RepeatError(f"--repeat must be >= 1, got {count}")
    return count


def parse_width(text: str | float) -> float:
    """``--repeat-width``: ``5%`` or ``0.05`` → 0.05 (a fraction of the mean)."""
    raw = str(text).strip()
    try:
        value = float(raw.rstrip("%")) / (100.0 if raw.endswith("%") else 1.0)
    except ValueError:
        value = math.nan
    if not (0 < value < 1):
        raise RepeatError(f"--repeat-width '{text}' is not a fraction of the mean between 0 and 100 %; "
                          "give e.g. --repeat-width 5%")
    return value


def check_metrics(names: Sequence[str]) -> tuple[str, ...]:
    """``--repeat-metric`` names: figures of the result file (output_throughput, p99_ttft_ms, …)."""
    bad = [n for n in names if not _FIGURE.match(n)]
    if bad:
        raise RepeatError(f"--repeat-metric '{bad[0]}' is not a result figure; give e.g. output_throughput, "
                          "request_goodput, p99_ttft_ms, mean_tpot_ms")
    return tuple(names) or DEFAULT_METRICS


def half_width(values: Sequence[float]) -> float:
    """Half-width of the 95 % t-interval of the mean, relative to the mean; inf below two values or a zero mean."""
    xs = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    k = len(xs)
    if k < 2:
        return math.inf
    mean = sum(xs) / k
    if mean == 0:
        return math.inf
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (k - 1))
    t = _T975[k - 2] if k - 2 < len(_T975) else 1.96
    return t * sd / math.sqrt(k) / abs(mean)


def widths(runs: Sequence[Mapping[str, object]], metrics: Sequence[str]) -> dict[str, float]:
    """Each metric's relative half-width over ``runs`` (the result dicts of one point)."""
    return {m: half_width([r.get(m) for r in runs]) for m in metrics}  # type: ignore[misc]


def done(runs: Sequence[Mapping[str, object]], metrics: Sequence[str], width: float) -> bool:
    """True once at least MIN_RUNS runs put every metric's interval within ``width``."""
    return len(runs) >= MIN_RUNS and all(w <= width for w in widths(runs, metrics).values())


def describe(runs: Sequence[Mapping[str, object]], metrics: Sequence[str], width: float) -> str:
    """One line for the console: where each interval stands against the target."""
    parts = ", ".join(f"{m} ±{w * 100:.1f} %" if math.isfinite(w) else f"{m} ±?" for m, w in
                      widths(runs, metrics).items())
    return f"repeat {len(runs)}: 95 % interval of the mean {parts} (target ±{width * 100:g} %)"
