"""A value that is fixed or drawn from a distribution: ``8``, ``uniform:4:12``, ...

Session workloads give turns, tokens per turn and think times this way, one option
each. The forms: a number (fixed); ``uniform:LOW:HIGH``; ``normal:MEAN:STD``;
``lognormal:MEAN:STD`` (the mean and standard deviation of the values themselves, not
of their logarithm, so ``lognormal:2:1`` means "about 2 s, with a long tail");
``exponential:MEAN``. Draws come from the caller's seeded generator, so a set is the
same on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loadgen.workload.errors import WorkloadError

KINDS = {"fixed": 1, "uniform": 2, "normal": 2, "lognormal": 2, "exponential": 1}
FORMS = "N, uniform:LOW:HIGH, normal:MEAN:STD, lognormal:MEAN:STD or exponential:MEAN"


@dataclass(frozen=True)
class Dist:
    kind: str
    params: tuple[float, ...]

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` float values (callers round and bound them)."""
        p = self.params
        if self.kind == "fixed":
            return np.full(n, p[0], dtype=np.float64)
        if self.kind == "uniform":
            return rng.uniform(p[0], p[1], n)
        if self.kind == "normal":
            return rng.normal(p[0], p[1], n)
        if self.kind == "exponential":
            return rng.exponential(p[0], n)
        mean, std = p
        sigma2 = math.log1p((std / mean) ** 2)
        return rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), n)

    def ints(self, rng: np.random.Generator, n: int, floor_at: int) -> list[int]:
        """``n`` whole values, none below ``floor_at``."""
        return np.maximum(np.rint(self.draw(rng, n)), floor_at).astype(np.int64).tolist()

    def maximum(self) -> float:
        """The largest value a draw can take (inf for unbounded kinds): context-window checks."""
        if self.kind == "fixed":
            return self.params[0]
        if self.kind == "uniform":
            return self.params[1]
        return math.inf


def parse_dist(text: str, option: str, *, minimum: float = 0.0) -> Dist:
    """``text`` as a :class:`Dist`; a bad one is a one-line :class:`WorkloadError` naming ``option``."""
    parts = str(text).strip().split(":")
    kind = "fixed" if len(parts) == 1 else parts[0].lower()
    raw = parts if kind == "fixed" else parts[1:]
    bad = WorkloadError(f"{option} '{text}' is not a value or distribution: use {FORMS}")
    if kind not in KINDS or len(raw) != KINDS[kind]:
        raise bad
    try:
        params = tuple(float(x) for x in raw)
    except ValueError:
        raise bad from None
    if not all(math.isfinite(x) for x in params):
        raise bad
    if kind == "fixed" and params[0] < minimum:
        raise WorkloadError(f"{option} must be at least {minimum:g}, got {text}")
    if kind == "uniform" and not minimum <= params[0] <= params[1]:
        raise WorkloadError(f"{option} '{text}': need {minimum:g} <= LOW <= HIGH")
    if kind in ("normal", "lognormal") and (params[1] < 0 or (kind == "lognormal" and params[0] <= 0)):
        raise WorkloadError(f"{option} '{text}': the mean must be > 0 and the standard deviation >= 0")
    if kind == "exponential" and params[0] <= 0:
        raise WorkloadError(f"{option} '{text}': the mean must be > 0")
    return Dist(kind, params)
