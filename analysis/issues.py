"""One comparability problem (:class:`Issue`) and which figures each kind distorts.

Its own module because every source of issues (the checks, the server's telemetry, the
prefix cache) builds on it, and :mod:`analysis.checks` gathers them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Which figures each kind of difference distorts (used to qualify conclusions).
AFFECTS: dict[str, tuple[str, ...]] = {
    "ignore_eos": ("output_throughput", "tpot", "e2el", "input_throughput"),
    "output_len": ("output_throughput", "tpot", "e2el", "input_throughput"),
    "input_len": ("ttft", "input_throughput", "output_throughput"),
    "dataset": ("output_throughput", "ttft", "tpot", "itl", "e2el", "input_throughput"),
    "burst": ("ttft", "e2el"),
    "engine_settings": ("output_throughput", "tpot", "itl", "ttft", "e2el", "input_throughput"),
    "client_saturated": ("output_throughput", "ttft", "tpot", "itl", "e2el", "input_throughput"),
    "replay_behind": ("ttft", "tpot", "itl", "e2el", "output_throughput", "input_throughput"),
    "prompt_mismatch": ("ttft", "input_throughput"),
    "partial": ("output_throughput", "ttft", "tpot", "itl", "e2el", "input_throughput"),
    "model": ("output_throughput", "ttft", "tpot", "itl", "e2el", "input_throughput"),
    "client": ("ttft", "input_throughput"),
    "warm_prefix_cache": ("output_throughput", "ttft", "e2el", "input_throughput"),
    "reasoning": ("ttft", "tpot", "e2el", "output_throughput"),
    "no_answer": ("ttfa",),
}


@dataclass(frozen=True)
class Issue:
    """One comparability problem. ``severity`` is ``warning`` (distorts figures) or ``note``."""

    kind: str
    severity: str
    message: str
    labels: tuple[str, ...] = field(default_factory=tuple)

    @property
    def affects(self) -> tuple[str, ...]:
        return AFFECTS.get(self.kind, ())

    def __str__(self) -> str:
        return f"{self.severity.upper()}: {self.message}"
