"""Per-request lengths, with vLLM's meaning of ``--random-range-ratio``.

vLLM (``vllm bench serve``, current releases) draws each length uniformly from the
integers in ``[floor(L*(1-R)), ceil(L*(1+R))]`` with ``0 <= R < 1``. We keep that
meaning so a figure from one tool reads the same in the other; SGLang's older
``[L*R, L]`` meaning is not used.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from loadgen.workload.errors import WorkloadError

if TYPE_CHECKING:
    import numpy as np


def length_bounds(base: int, ratio: float, floor_at: int = 1) -> tuple[int, int]:
    """Inclusive bounds of the uniform length distribution, never below ``floor_at``."""
    if not 0.0 <= ratio < 1.0:
        raise WorkloadError(
            f"range ratio {ratio} is outside [0, 1): lengths are drawn from [L*(1-R), L*(1+R)]; "
            "use e.g. --random-range-ratio 0.5"
        )
    low = max(floor_at, math.floor(base * (1 - ratio)))
    high = max(low, math.ceil(base * (1 + ratio)))
    return low, high


def sample_lengths(base: int, ratio: float, count: int, rng: np.random.Generator, floor_at: int = 1) -> list[int]:
    """``count`` lengths around ``base``; all equal to ``base`` when ``ratio`` is 0."""
    if ratio == 0:
        return [max(base, floor_at)] * count
    low, high = length_bounds(base, ratio, floor_at)
    return rng.integers(low, high + 1, size=count).tolist()
