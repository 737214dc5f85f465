"""Per-request fault decisions, drawn from a seeded generator.

Clients are judged by how they survive servers misbehaving; the sim makes each
kind of misbehaviour happen at a chosen rate, reproducibly (same seed, same
request order, same faults).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FaultConfig:
    p_429: float = 0.0
    p_500: float = 0.0
    p_reset_before: float = 0.0
    p_reset_mid: float = 0.0
    p_stall: float = 0.0
    stall_ms: float = 2000.0
    p_malformed: float = 0.0
    startup_delay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("p_429", "p_500", "p_reset_before", "p_reset_mid", "p_stall", "p_malformed"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault probability {key.removeprefix('p_')} must be within 0..1, got {value}")
        if self.p_429 + self.p_500 + self.p_reset_before > 1.0:
            raise ValueError("429 + 500 + reset-before probabilities must add up to at most 1")
        if self.stall_ms < 0 or self.startup_delay < 0:
            raise ValueError("stall-ms and startup-delay must be >= 0")

    @property
    def any(self) -> bool:
        return any((self.p_429, self.p_500, self.p_reset_before, self.p_reset_mid, self.p_stall, self.p_malformed))


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What goes wrong with one request. Token positions are 1-based output counts
    after which the fault strikes (0 = never)."""

    status: int = 0
    reset_before: bool = False
    reset_after: int = 0
    stall_after: int = 0
    malformed_after: int = 0


NO_FAULT = FaultPlan()


def plan_faults(cfg: FaultConfig, rng: random.Random, output_len: int) -> FaultPlan:
    """Draw the faults of one request.

    The "before the first byte" faults exclude each other (one draw); the
    mid-stream ones are independent and strike at a uniform position inside the
    output, so a client sees them after some content has arrived.
    """
    if not cfg.any:
        return NO_FAULT
    u = rng.random()
    if u < cfg.p_429:
        return FaultPlan(status=429)
    u -= cfg.p_429
    if u < cfg.p_500:
        return FaultPlan(status=500)
    u -= cfg.p_500
    if u < cfg.p_reset_before:
        return FaultPlan(reset_before=True)
    span = max(1, output_len - 1)
    reset_after = rng.randint(1, span) if rng.random() < cfg.p_reset_mid else 0
    stall_after = rng.randint(1, span) if rng.random() < cfg.p_stall else 0
    malformed_after = rng.randint(1, span) if rng.random() < cfg.p_malformed else 0
    if not (reset_after or stall_after or malformed_after):
        return NO_FAULT
    return FaultPlan(0, False, reset_after, stall_after, malformed_after)
