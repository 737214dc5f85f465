"""The figures of a session run: per session (turns completed, duration, how it ended),
by turn index and by prompt length (how TTFT grows as conversations do).

Kept exactly (a few numbers per request, no histograms): a session run is thousands to
hundreds of thousands of turns, and the per-turn split is what the figures are for.
Mergeable across workers: a session runs on one worker, so per-session entries never
overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from loadgen.records import RequestRecord

ENDS = ("completed", "failed", "context_exceeded")
PERCENTILES = (50, 90, 99)


class SessionFigures:
    """Running per-session and per-request values of a session point."""

    def __init__(self) -> None:
        # session id -> [turns completed, first sent ns, last end ns, end reason]
        self.per_session: dict[int, list[Any]] = {}
        self.turn: list[int] = []
        self.prompt: list[int] = []
        self.ttft_ms: list[float] = []

    def add(self, records: Sequence[RequestRecord], ok: Sequence[RequestRecord], ttft_ms: np.ndarray) -> None:
        """A batch of measured records; ``ok`` are the successful ones, ``ttft_ms`` theirs."""
        for r in records:
            if r.session < 0:
                continue
            entry = self.per_session.get(r.session)
            if entry is None:
                entry = self.per_session[r.session] = [0, r.sent_ns, 0, ""]
            if r.sent_ns and (not entry[1] or r.sent_ns < entry[1]):
                entry[1] = r.sent_ns
            entry[2] = max(entry[2], r.last_ns or r.sent_ns)
            if r.session_end:
                entry[3] = r.session_end
        for r, t in zip(ok, ttft_ms.tolist(), strict=True):
            if r.session < 0:
                continue
            self.per_session[r.session][0] += 1
            self.turn.append(r.turn)
            self.prompt.append(r.input_len)
            self.ttft_ms.append(t)

    def merge(self, other: SessionFigures) -> None:
        self.per_session.update(other.per_session)
        self.turn += other.turn
        self.prompt += other.prompt
        self.ttft_ms += other.ttft_ms

    def summary(self) -> dict[str, Any]:
        """The result JSON's ``sessions`` object (docs/loadgen.md)."""
        entries = list(self.per_session.values())
        ends = [e[3] for e in entries]
        turns = np.asarray([e[0] for e in entries], dtype=np.float64)
        duration = np.asarray([(e[2] - e[1]) / 1e9 for e in entries if e[1] and e[2] > e[1]], dtype=np.float64)
        out: dict[str, Any] = {
            "sessions": len(entries),
            **{end: ends.count(end) for end in ENDS},
            "cut": ends.count(""),  # still going when the run ended (--duration, Ctrl-C)
            "turns_completed": _stats(turns),
            "session_duration_s": _stats(duration),
        }
        turn = np.asarray(self.turn, dtype=np.int64)
        prompt = np.asarray(self.prompt, dtype=np.int64)
        ttft = np.asarray(self.ttft_ms, dtype=np.float64)
        out["by_turn"] = [
            {"turn": int(k), "requests": int(m.sum()), "mean_prompt_tokens": float(prompt[m].mean()),
             **_ttft(ttft[m])}
            for k in np.unique(turn) for m in [turn == k]
        ]
        out["by_prompt_tokens"] = []
        if prompt.size:
            bucket = np.floor(np.log2(np.maximum(prompt, 1))).astype(np.int64)
            for b in np.unique(bucket):
                m = bucket == b
                out["by_prompt_tokens"].append({"min_tokens": int(2 ** b), "max_tokens": int(2 ** (b + 1) - 1),
                                                "requests": int(m.sum()), **_ttft(ttft[m])})
        return out


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if not values.size:
        return {"mean": None, "min": None, "max": None, **{f"p{p}": None for p in PERCENTILES}}
    pct = np.percentile(values, PERCENTILES)
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max()),
            **{f"p{p}": float(v) for p, v in zip(PERCENTILES, pct, strict=True)}}


def _ttft(values: np.ndarray) -> dict[str, float | None]:
    if not values.size:
        return {"mean_ttft_ms": None, **{f"p{p}_ttft_ms": None for p in PERCENTILES}}
    pct = np.percentile(values, PERCENTILES)
    out = {"mean_ttft_ms": float(values.mean())}
    out.update({f"p{p}_ttft_ms": float(v) if math.isfinite(v) else None for p, v in zip(PERCENTILES, pct, strict=True)})
    return out
