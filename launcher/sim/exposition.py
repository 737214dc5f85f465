"""Prometheus text exposition with vLLM's metric names, written by hand.

Dashboards and scrapers written for vLLM work unchanged against the sim. The
client library is only a test dependency, so the few counters, gauges and
histograms needed are kept here as plain objects.
"""

from __future__ import annotations

from bisect import bisect_left

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
LATENESS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Histogram:
    """Cumulative-on-export histogram; observe() is one bisect and two adds."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def observe_many(self, value: float, n: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def quantile(self, q: float) -> float:
        """Upper bucket bound at quantile q (coarse, for summaries)."""
        if not self.count:
            return 0.0
        target = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= target:
                return self.bounds[i] if i < len(self.bounds) else float("inf")
        return float("inf")


def _fmt(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else f"{float(value):.1f}"


def _labels(labels: dict[str, str], extra: str = "") -> str:
    parts = [f'{k}="{v}"' for k, v in labels.items()]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def render_gauge(name: str, help_text: str, value: float, labels: dict[str, str]) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name}{_labels(labels)} {_fmt(value)}\n"


def render_counter(name: str, help_text: str, value: float, labels: dict[str, str]) -> str:
    # prometheus_client (and so vLLM) names the family with its _total suffix in text format
    total = f"{name}_total"
    return f"# HELP {total} {help_text}\n# TYPE {total} counter\n{total}{_labels(labels)} {_fmt(value)}\n"


def render_histogram(name: str, help_text: str, hist: Histogram, labels: dict[str, str]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    cumulative = 0
    for bound, count in zip(hist.bounds, hist.counts, strict=False):
        cumulative += count
        le = 'le="' + _fmt(bound) + '"'
        lines.append(f"{name}_bucket{_labels(labels, le)} {cumulative}")
    le_inf = 'le="+Inf"'
    lines.append(f"{name}_bucket{_labels(labels, le_inf)} {hist.count}")
    lines.append(f"{name}_sum{_labels(labels)} {_fmt(hist.sum)}")
    lines.append(f"{name}_count{_labels(labels)} {hist.count}")
    return "\n".join(lines) + "\n"
