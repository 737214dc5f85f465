"""Which rows of a trace are sent, how long each prompt is, and when each is released.

Pure functions over a :class:`~loadgen.workload.traces.Trace`'s arrays; nothing is
sent or built here. The steps, in order:

1. the time window ``[start_s, end_s)`` in seconds from the trace's first request;
2. rows the server cannot take are counted before anything is sent: longer than its
   context window (``max_model_len``: prompt + output tokens, as vLLM rejects them) —
   skipped, or shortened with ``too_long="shorten"`` — and prompts too short to hold
   what the chat template or BOS adds plus one token of content (skipped);
3. ``limit`` (``--num-prompts``): the first N rows that are sent;
4. release times: the trace's own, from the first row sent, each idle gap capped at
   ``max_gap_s``, divided by ``speedup``; with ``timing="order"`` every offset is 0
   and the concurrency cap paces the trace's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loadgen.workload.errors import WorkloadError
from loadgen.workload.traces import Trace

TIMINGS = ("trace", "order")
TOO_LONG = ("skip", "shorten")


@dataclass(frozen=True)
class ReplayOptions:
    """The replay controls (``--trace-*``, ``--num-prompts``)."""

    speedup: float = 1.0
    start_s: float = 0.0
    end_s: float | None = None
    max_gap_s: float | None = None
    limit: int | None = None
    timing: str = "trace"  # trace: open loop at the trace's times; order: as fast as the concurrency cap allows
    too_long: str = "skip"  # rows longer than the context window: skip | shorten

    def check(self) -> None:
        """One line naming the option and a valid value, for the first bad one."""
        if not (self.speedup > 0 and math.isfinite(self.speedup)):
            raise WorkloadError(f"--trace-speedup must be a positive number, got {self.speedup}; e.g. 2 replays twice as fast")
        if not (self.start_s >= 0 and math.isfinite(self.start_s)):
            raise WorkloadError(f"--trace-start must be a number of seconds >= 0, got {self.start_s}")
        if self.end_s is not None and not (self.end_s > self.start_s):
            raise WorkloadError(f"--trace-end {self.end_s:g} must be after --trace-start {self.start_s:g}")
        if self.max_gap_s is not None and not (self.max_gap_s >= 0 and math.isfinite(self.max_gap_s)):
            raise WorkloadError(f"--trace-max-gap must be a number of seconds >= 0, got {self.max_gap_s}")
        if self.limit is not None and self.limit < 1:
            raise WorkloadError(f"--num-prompts must be at least 1, got {self.limit}")
        if self.timing not in TIMINGS:
            raise WorkloadError(f"--trace-timing must be one of {', '.join(TIMINGS)}, got '{self.timing}'")
        if self.too_long not in TOO_LONG:
            raise WorkloadError(f"--trace-too-long must be one of {', '.join(TOO_LONG)}, got '{self.too_long}'")


@dataclass(frozen=True)
class Selection:
    """The rows sent (trace row indices, in order), their lengths and release offsets."""

    rows: np.ndarray  # int64
    input_lens: np.ndarray  # int64, after shortening
    output_lens: np.ndarray  # int64, after shortening
    release_s: np.ndarray  # float64, from the first row sent
    in_window: int  # rows considered (in the window, up to the last one sent when limited)
    skipped_too_long: int
    skipped_too_short: int
    shortened: int

    @property
    def span_s(self) -> float:
        return float(self.release_s[-1]) if self.release_s.size else 0.0


def select(trace: Trace, opts: ReplayOptions, *, min_input: int, max_model_len: int | None) -> Selection:
    """The replay of ``trace`` under ``opts``; ``min_input`` is the shortest prompt that can be
    built exactly (template or BOS plus one token)."""
    opts.check()
    t = trace.times_s
    end = math.inf if opts.end_s is None else opts.end_s
    window = np.flatnonzero((t >= opts.start_s) & (t < end))
    if window.size == 0:
        raise WorkloadError(
            f"{trace.path}: no request in the window [{opts.start_s:g} s, {end:g} s) of a trace that spans "
            f"{float(t[-1]):.3f} s; move --trace-start/--trace-end")
    ins, outs = trace.input_lens[window].copy(), trace.output_lens[window].copy()
    short = ins < min_input
    too_long = np.zeros(window.size, dtype=bool)
    shortened = np.zeros(window.size, dtype=bool)
    if max_model_len is not None:
        over = ~short & (ins + outs > max_model_len)
        if opts.too_long == "shorten" and max_model_len > min_input:
            outs = np.where(over, np.minimum(outs, max_model_len - min_input), outs)
            ins = np.where(over, np.minimum(ins, max_model_len - outs), ins)
            shortened = over
        else:
            too_long = over
    keep = np.flatnonzero(~(short | too_long))
    if opts.limit is not None and keep.size > opts.limit:
        keep = keep[:opts.limit]
        considered = int(keep[-1]) + 1  # rows past the last one sent were never looked at
    else:
        considered = window.size
    if keep.size == 0:
        raise WorkloadError(_none_fit(trace.path, int(short.sum()), int(too_long.sum()), min_input, max_model_len))
    times = t[window[keep]]
    return Selection(
        rows=window[keep], input_lens=ins[keep], output_lens=outs[keep],
        release_s=release_offsets(times, opts),
        in_window=considered,
        skipped_too_long=int(too_long[:considered].sum()),
        skipped_too_short=int(short[:considered].sum()),
        shortened=int(shortened[keep].sum()),
    )


def release_offsets(times_s: np.ndarray, opts: ReplayOptions) -> np.ndarray:
    """Offsets from the first time in ``times_s``: idle gaps capped, then sped up (zeros in order mode)."""
    if opts.timing == "order" or times_s.size == 0:
        return np.zeros(times_s.size, dtype=np.float64)
    gaps = np.diff(times_s)
    if opts.max_gap_s is not None:
        gaps = np.minimum(gaps, opts.max_gap_s)
    offsets = np.empty(times_s.size, dtype=np.float64)
    offsets[0] = 0.0
    np.cumsum(gaps, out=offsets[1:])
    return offsets / opts.speedup


def _none_fit(path: str, short: int, too_long: int, min_input: int, max_model_len: int | None) -> str:
    why = []
    if too_long:
        why.append(f"{too_long} exceed the server's context of {max_model_len} tokens "
                   "(pass --trace-too-long shorten, or serve a larger --max-model-len)")
    if short:
        why.append(f"{short} are shorter than {min_input} tokens, the least a prompt can be "
                   "(the chat template or BOS takes the rest)")
    return f"{path}: no request of the window can be sent: {'; '.join(why)}"
