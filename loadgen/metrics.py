"""From request records to figures: pure functions, numpy, no I/O.

records ──► :func:`per_request` (one row per request, flat ITL array)
        ──► :func:`loadgen.aggregate.summarize` (counts, throughputs, stats per metric, goodput,
            errors by kind, prompt-token mismatches, loop lag)

Definitions (ARCHITECTURE.md, "Metrics contract"):

* TTFT  = first content chunk − sent;  E2EL = last byte − sent.
* TPOT  = (E2EL − TTFT) / (output_tokens − 1), only for requests with > 1 output token
  (as vLLM does).
* ITL   = gaps between token-bearing chunks. A chunk carrying k tokens contributes k
  gaps of 1/k of the time since the previous token-bearing chunk; the first chunk's
  tokens are covered by TTFT and contribute no gap.
* TTFA  = first *answer* chunk − sent (reasoning models: the thinking streamed before it
  is output, but not the answer); equal to TTFT for a request that did not reason.
  Reasoning time = TTFA − TTFT (E2EL − TTFT for a request whose every token was
  reasoning: ``no_answer``, counted, not failed); answer time = E2EL − TTFA; answer
  TPOT = answer time / (answer tokens − 1). Reasoning tokens come from the server's
  ``completion_tokens_details.reasoning_tokens`` (SGLang: ``usage.reasoning_tokens``)
  where given (a 0 beside reasoning deltas is not trusted), else from the reasoning
  chunks (rescaled with the rest when the final usage corrects the chunk counts);
  answer tokens are the rest of the output.
* Queue = sent − intended release (client-side queueing: the concurrency gate or a
  late loop). ``ttft_from_intended`` and ``e2el_from_intended`` add it back, which is
  what a user would have seen had the client not stalled (coordinated omission).

Token counts per chunk come from the server's running usage where it sends it;
otherwise each chunk counts one token. When the final count (``output_tokens``)
disagrees with the chunk counts, the chunk counts are rescaled to it, keeping their
proportions (see :func:`_corrected_chunk_tokens`).

Failed requests are counted by error kind and excluded from the latency figures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from loadgen.records import RequestRecord

METRICS = ("ttft", "tpot", "itl", "e2el")
EXTRA_METRICS = ("queue", "ttft_from_intended", "e2el_from_intended")
# released − intended: the schedule's own lateness (a trace replay's lag), kept in the
# point's statistics but not written as result keys of its own
RELEASE_METRICS = ("release",)
REASONING_METRICS = ("ttfa", "reasoning_time", "answer_time", "answer_tpot")
GOODPUT_METRICS = ("ttft", "tpot", "e2el", "ttfa")
DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0)
# Loop lag above this at p99 means the client itself delayed reads and releases by
# more than a typical decode step's jitter: its figures are not the server's alone.
SATURATION_LAG_P99_MS = 10.0
NS_PER_MS = 1_000_000.0


@dataclass
class RequestFigures:
    """Per-request figures of the successful requests (ms), plus the flat ITL array.

    ``itl_ms`` concatenates every request's gaps; ``itl_offsets[i]:itl_offsets[i+1]``
    are request i's. Arrays are aligned with ``records`` (the successful ones).
    """

    records: list[RequestRecord]
    ttft_ms: np.ndarray
    e2el_ms: np.ndarray
    tpot_ms: np.ndarray  # NaN where output_tokens <= 1
    queue_ms: np.ndarray
    release_ms: np.ndarray  # released − intended (the schedule's lateness, before connect and write)
    ttft_from_intended_ms: np.ndarray
    e2el_from_intended_ms: np.ndarray
    itl_ms: np.ndarray
    itl_offsets: np.ndarray
    output_tokens: np.ndarray
    input_lens: np.ndarray
    reasoning: Reasoning | None = None

    def itls_of(self, i: int) -> np.ndarray:
        return self.itl_ms[self.itl_offsets[i] : self.itl_offsets[i + 1]]

    def values(self, metric: str) -> np.ndarray:
        """The finite samples of one metric (``tpot`` drops single-token requests)."""
        arr = self.ms(metric)
        return arr[np.isfinite(arr)]

    def ms(self, metric: str) -> np.ndarray:
        """One metric's per-request array (ms), the reasoning ones included."""
        if metric in REASONING_METRICS:
            return getattr(self.reasoning, f"{metric}_ms")
        return getattr(self, f"{metric}_ms")


@dataclass
class Reasoning:
    """The reasoning split of the same requests (arrays aligned with ``records``).

    Latencies are NaN where they do not apply: TTFA and the answer figures of a
    ``no_answer`` request, the reasoning time of a request that did not reason.
    """

    ttfa_ms: np.ndarray
    reasoning_time_ms: np.ndarray
    answer_time_ms: np.ndarray
    answer_tpot_ms: np.ndarray
    reasoning_tokens: np.ndarray
    answer_tokens: np.ndarray
    reasoned: np.ndarray  # bool: some output came before the answer (reasoning or an unknown field)
    no_answer: np.ndarray  # bool: reasoned, and no answer token ever came
    from_usage: np.ndarray  # bool: reasoning tokens are the server's count


@dataclass
class Stats:
    """Summary statistics of one metric, in ms. With no samples (n=0) every figure is
    ``None``: a run where nothing succeeded has no latency, not a zero one."""

    n: int
    mean: float | None
    median: float | None
    std: float | None
    min: float | None
    max: float | None
    percentiles: dict[float, float | None] = field(default_factory=dict)


@dataclass
class Summary:
    """Aggregates of one load point."""

    duration_s: float
    num_requests: int
    completed: int
    failed: int
    errors_by_kind: dict[str, int]
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    input_throughput: float
    output_throughput: float
    total_token_throughput: float
    good_completed: int | None
    request_goodput: float | None
    stats: dict[str, Stats]
    output_tokens_source: dict[str, int]
    prompt_tokens_checked: int
    prompt_token_mismatches: int
    prompt_token_max_diff: int
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    client_saturated: bool
    retries: int
    max_concurrency_observed: int
    invisible_outputs: int = 0  # successful requests with tokens that decoded to no visible text
    invisible_tokens: int = 0  # those tokens (usage counted them; no text came with them)
    mean_concurrency: float = 0.0  # sum of E2EL / duration (SGLang's "concurrency")
    cache_reported: int = 0  # successful requests whose usage reported cached tokens
    cached_tokens: int = 0  # their prompt tokens served from the prefix cache
    cache_prompt_tokens: int = 0  # their prompt tokens
    reasoning_requests: int = 0  # successful requests that reasoned before answering
    no_answer: int = 0  # of those, the ones whose every token was reasoning (not failures)
    total_reasoning_tokens: int = 0
    total_answer_tokens: int = 0
    reasoning_tokens_source: dict[str, int] = field(default_factory=dict)  # "usage" | "deltas": requests
    unrecognised_fields: dict[str, int] = field(default_factory=dict)  # delta field name → requests


def _corrected_chunk_tokens(rec: RequestRecord) -> np.ndarray:
    """Per-chunk token counts, made to add up to the request's final output count.

    Cumulative counts are rescaled and rounded, so every token is attributed to the
    chunk where it most plausibly arrived and the total is exact.
    """
    k = np.asarray(rec.chunk_tokens, dtype=np.int64) if rec.chunk_tokens else np.ones(len(rec.chunk_ns), np.int64)
    total = int(k.sum())
    target = rec.output_tokens
    if target <= 0 or total == target or total == 0:
        return k
    cum = np.rint(np.cumsum(k) * (target / total)).astype(np.int64)
    return np.diff(cum, prepend=0)


def per_request(records: Iterable[RequestRecord]) -> RequestFigures:
    """Figures for every successful, non-warm-up request. Vectorised over all chunks."""
    ok = [r for r in records if r.ok and not r.warmup and r.first_ns > 0]
    n = len(ok)
    sent = np.fromiter((r.sent_ns for r in ok), np.int64, n)
    first = np.fromiter((r.first_ns for r in ok), np.int64, n)
    last = np.fromiter((r.last_ns for r in ok), np.int64, n)
    intended = np.fromiter((r.intended_ns or r.sent_ns for r in ok), np.int64, n)
    released = np.fromiter((r.released_ns or r.sent_ns for r in ok), np.int64, n)
    out_tok = np.fromiter((r.output_tokens for r in ok), np.int64, n)
    in_len = np.fromiter((r.input_len for r in ok), np.int64, n)

    ttft = (first - sent) / NS_PER_MS
    e2el = (last - sent) / NS_PER_MS
    queue = (sent - intended) / NS_PER_MS
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(out_tok > 1, (e2el - ttft) / (out_tok - 1), np.nan)

    # ITL over all chunks at once: flat stamps, per-chunk token counts, owner index.
    stamps_list: list[np.ndarray] = []
    tokens_list: list[np.ndarray] = []
    lengths = np.zeros(n, np.int64)
    for i, rec in enumerate(ok):
        if len(rec.chunk_ns) < 2:
            continue
        k = _corrected_chunk_tokens(rec)
        keep = k > 0
        t = np.asarray(rec.chunk_ns, np.int64)[keep]
        if t.size < 2:
            continue
        stamps_list.append(t)
        tokens_list.append(k[keep])
        lengths[i] = t.size
    if stamps_list:
        t = np.concatenate(stamps_list)
        k = np.concatenate(tokens_list)
        owner = np.repeat(np.nonzero(lengths)[0], lengths[lengths > 0])
        same = owner[1:] == owner[:-1]
        interval = (t[1:] - t[:-1])[same]
        ks = k[1:][same]
        itl = np.repeat(interval / ks, ks) / NS_PER_MS
        gaps_per_req = np.bincount(owner[1:][same], weights=ks, minlength=n).astype(np.int64)
    else:
        itl = np.zeros(0)
        gaps_per_req = np.zeros(n, np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(gaps_per_req, out=offsets[1:])

    reasoning = reasoning_split(ok, sent, first, last, out_tok, ttft, e2el)
    return RequestFigures(
        records=ok,
        ttft_ms=ttft,
        e2el_ms=e2el,
        tpot_ms=tpot,
        queue_ms=queue,
        release_ms=(released - intended) / NS_PER_MS,
        ttft_from_intended_ms=ttft + queue,
        e2el_from_intended_ms=e2el + queue,
        itl_ms=itl,
        itl_offsets=offsets,
        output_tokens=out_tok,
        input_lens=in_len,
        reasoning=reasoning,
    )


def reasoning_split(ok: Sequence[RequestRecord], sent: np.ndarray, first: np.ndarray, last: np.ndarray,
                    out_tok: np.ndarray, ttft: np.ndarray, e2el: np.ndarray) -> Reasoning:
    """TTFA, reasoning and answer figures of successful requests (the module's definitions)."""
    n = len(ok)
    answer = np.fromiter((r.answer_ns for r in ok), np.int64, n)
    r_chunks = np.fromiter((r.reasoning_chunk_tokens for r in ok), np.int64, n)
    u_chunks = np.fromiter((r.unrecognised_tokens for r in ok), np.int64, n)
    usage = np.fromiter((-1 if (c := r.server_reasoning_tokens) is None else c for r in ok), np.int64, n)
    from_usage = usage >= 0
    thought = r_chunks + u_chunks
    reasoned = (thought > 0) | (usage > 0)
    # chunk counts are rescaled as the ITL's are when the final usage corrects them
    scale = np.ones(n)
    for i in np.nonzero(thought > 0)[0].tolist():
        rec = ok[i]
        total = sum(rec.chunk_tokens) if rec.chunk_tokens else len(rec.chunk_ns)
        if total and out_tok[i] > 0:
            scale[i] = out_tok[i] / total
    reasoning_tokens = np.where(from_usage, usage, np.rint(r_chunks * scale)).astype(np.int64)
    not_answer = np.where(from_usage, usage, np.rint(thought * scale)).astype(np.int64)
    answer_tokens = np.maximum(out_tok - not_answer, 0)
    # a request that did not reason answered from its first token (completions, SGLang,
    # or a chat stream whose tokens came without text)
    answer = np.where((answer == 0) & ~reasoned, first, answer)
    no_answer = answer == 0
    answered = ~no_answer
    nan = np.full(n, np.nan)
    ttfa = np.where(answered, (answer - sent) / NS_PER_MS, nan)
    answer_time = np.where(answered, (last - answer) / NS_PER_MS, nan)
    reasoning_time = np.where(reasoned, np.where(answered, ttfa - ttft, e2el - ttft), nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        answer_tpot = np.where(answered & (answer_tokens > 1), answer_time / (answer_tokens - 1), nan)
    return Reasoning(
        ttfa_ms=ttfa, reasoning_time_ms=reasoning_time, answer_time_ms=answer_time, answer_tpot_ms=answer_tpot,
        reasoning_tokens=reasoning_tokens, answer_tokens=answer_tokens, reasoned=reasoned, no_answer=no_answer,
        from_usage=from_usage,
    )


def stats_of(values: np.ndarray, percentiles: Sequence[float]) -> Stats:
    """Exact statistics of a sample (population std, linear percentiles, like numpy and vLLM).

    The result files use :class:`loadgen.aggregate.Aggregate` instead, whose
    percentiles come from HDR histograms; this is for small, in-memory samples.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return Stats(0, None, None, None, None, None, {float(p): None for p in percentiles})
    pct = np.percentile(v, list(percentiles)) if percentiles else np.empty(0)
    return Stats(
        n=int(v.size),
        mean=float(v.mean()),
        median=float(np.median(v)),
        std=float(v.std()),
        min=float(v.min()),
        max=float(v.max()),
        percentiles={float(p): float(x) for p, x in zip(percentiles, pct, strict=True)},
    )


def good_mask(fig: RequestFigures, slos_ms: Mapping[str, float]) -> np.ndarray:
    """vLLM's goodput rule: a request is good when it meets every SLO given.

    A request with a single output token has no TPOT and passes the TPOT SLO (vLLM
    counts its TPOT as 0); a request that never answered (``no_answer``) fails a TTFA SLO.
    """
    good = np.ones(len(fig.records), dtype=bool)
    for name, limit in slos_ms.items():
        if name not in GOODPUT_METRICS:
            raise ValueError(f"unknown goodput metric {name!r}; use one of {', '.join(GOODPUT_METRICS)}")
        arr = fig.ms(name)
        good &= np.nan_to_num(arr, nan=np.inf if name == "ttfa" else 0.0) <= limit
    return good


def max_in_flight(records: Sequence[RequestRecord]) -> int:
    """Peak number of requests between send and last byte (checks the concurrency gate)."""
    ev = []
    for r in records:
        if r.sent_ns and (r.last_ns or r.first_ns):
            end = max(r.last_ns, r.first_ns)
            ev.append((r.sent_ns, 1))
            ev.append((end, -1))
    if not ev:
        return 0
    ev.sort(key=lambda e: (e[0], e[1]))
    arr = np.cumsum([d for _, d in ev])
    return int(arr.max())


def percentile_key(p: float) -> str:
    """vLLM's spelling of a percentile in result keys: 99 → "99", 99.9 → "99.9"."""
    return str(int(p)) if float(p).is_integer() else f"{p:g}"

