"""Running aggregates of one load point: what the figures need, and nothing more.

A million-request run cannot keep a million records (each holds its chunk stamps),
so finished requests are reduced in batches as the run goes (:meth:`Aggregate.add`)
and then dropped:

* every latency metric goes into an HDR histogram (µs, 3 significant digits) —
  percentiles and medians are read from it;
* exact running moments (count, sum, M2, min, max) per metric — means and minima /
  maxima are exact, standard deviations numerically stable (Chan's pairwise merge);
* counters: completions, errors by kind, tokens, retries, goodput, prompt-token
  mismatches, output-token sources;
* while the point is small (at most ``inline_limit`` requests) the per-request arrays
  that vLLM's result format carries (``ttfts``, ``itls``, ...), so that existing
  collectors keep reading small runs unchanged.

Aggregates of disjoint sets of requests merge exactly (:meth:`Aggregate.merge`), so
the figures of several client processes add up to those of one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from loadgen import hdr_record
from loadgen.metrics import (
    DEFAULT_PERCENTILES,
    EXTRA_METRICS,
    METRICS,
    NS_PER_MS,
    REASONING_METRICS,
    RELEASE_METRICS,
    SATURATION_LAG_P99_MS,
    Stats,
    Summary,
    good_mask,
    max_in_flight,
    per_request,
)
from loadgen.records import RequestRecord
from loadgen.session_figures import SessionFigures

ALL_METRICS = METRICS + EXTRA_METRICS + REASONING_METRICS + RELEASE_METRICS
# Metrics kept as histograms in result files and interval logs (the CO-corrected
# variants are reported as statistics only).
HISTOGRAM_TAGS = ("ttft", "tpot", "itl", "e2el", "queue")
DEFAULT_INLINE_LIMIT = 10_000


@dataclass
class Moments:
    """Exact count, sum, min and max; M2 for the variance (Chan et al.'s merge)."""

    n: int = 0
    total: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add(self, values: np.ndarray) -> None:
        if not values.size:
            return
        other = Moments(int(values.size), float(values.sum()), 0.0, float(values.min()), float(values.max()))
        other.m2 = float(((values - other.total / other.n) ** 2).sum())
        self.merge(other)

    def merge(self, o: Moments) -> None:
        if not o.n:
            return
        if not self.n:
            self.n, self.total, self.m2, self.lo, self.hi = o.n, o.total, o.m2, o.lo, o.hi
            return
        n = self.n + o.n
        delta = o.total / o.n - self.total / self.n
        self.m2 += o.m2 + delta * delta * self.n * o.n / n
        self.n, self.total = n, self.total + o.total
        self.lo, self.hi = min(self.lo, o.lo), max(self.hi, o.hi)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(max(self.m2 / self.n, 0.0)) if self.n else math.nan


@dataclass
class MetricAggregate:
    """One latency metric: exact moments (ms) plus its histogram (µs).

    The histogram (~190 KB) is made with the first sample, so a metric that never
    occurs — TTFA and the other reasoning figures of a model that does not reason —
    costs nothing.
    """

    moments: Moments = field(default_factory=Moments)
    hist: object | None = None
    clipped: int = 0

    def histogram(self) -> object:
        if self.hist is None:
            self.hist = hdr_record.new_histogram()
        return self.hist

    def add(self, values_ms: np.ndarray) -> None:
        values_ms = values_ms[np.isfinite(values_ms)]
        if not values_ms.size:
            return
        self.moments.add(values_ms)
        self.clipped += hdr_record.record_array(self.histogram(), np.rint(values_ms * 1000.0))

    def merge(self, other: MetricAggregate) -> None:
        self.moments.merge(other.moments)
        if other.moments.n:
            self.histogram().add(other.hist)  # type: ignore[attr-defined]
        self.clipped += other.clipped

    def stats(self, percentiles: Sequence[float]) -> Stats:
        """Mean, std, min and max exact; median and percentiles from the histogram.

        With no samples every figure is ``None``: an absent latency is not a zero one.
        """
        m = self.moments
        if not m.n:
            return Stats(0, None, None, None, None, None, {float(p): None for p in percentiles})
        h = self.hist

        def at(p: float) -> float:
            # Never outside the exact range: a bucket's upper edge may exceed the true max.
            return min(max(h.get_value_at_percentile(p) / 1000.0, m.lo), m.hi)  # type: ignore[attr-defined]

        return Stats(
            n=m.n, mean=m.mean, median=at(50.0), std=m.std, min=m.lo, max=m.hi,
            percentiles={float(p): at(float(p)) for p in percentiles},
        )


@dataclass
class InlineRequest:
    """What vLLM's result format keeps per request (seconds, as vLLM writes them)."""

    prompt_id: int
    input_len: int
    output_len: int
    ttft_s: float
    itls_s: np.ndarray  # float64 (8 bytes a gap; a list of floats would take 32)
    error: str
    text: str = ""


class Aggregate:
    """Everything one load point's figures need, updated batch by batch."""

    def __init__(self, *, goodput_slos_ms: Mapping[str, float] | None = None,
                 inline_limit: int = DEFAULT_INLINE_LIMIT) -> None:
        self.goodput_slos_ms = dict(goodput_slos_ms or {})
        self.inline_limit = inline_limit
        self.metrics = {m: MetricAggregate() for m in ALL_METRICS}
        self.num_requests = 0
        self.completed = 0
        self.errors: Counter[str] = Counter()
        self.total_input_tokens = 0
        self.total_output_tokens = 0
        self.good_completed = 0
        self.sources: Counter[str] = Counter()
        self.prompt_tokens_checked = 0
        self.prompt_token_mismatches = 0
        self.prompt_token_max_diff = 0
        self.retries = 0
        self.invisible_outputs = 0  # successful requests with tokens that decoded to no visible text
        self.invisible_tokens = 0
        # prefix cache, over the successful requests whose usage reported cached tokens
        self.cache_reported = 0
        self.cached_tokens = 0
        self.cache_prompt_tokens = 0
        self.e2el_sum_s = 0.0
        self.reasoning_requests = 0
        self.no_answer = 0
        self.total_reasoning_tokens = 0
        self.total_answer_tokens = 0
        self.reasoning_sources: Counter[str] = Counter()
        self.unrecognised_fields: Counter[str] = Counter()
        self.inline: list[InlineRequest] | None = [] if inline_limit > 0 else None
        self.sessions: SessionFigures | None = None  # a session point's figures (loadgen.session_figures)

    # -- updating ------------------------------------------------------------

    def add(self, records: Sequence[RequestRecord]) -> None:
        """Reduce a batch of finished, measured (non-warm-up) requests."""
        if not records:
            return
        self.num_requests += len(records)
        fig = per_request(records)
        ok_ids = {id(r) for r in fig.records}
        for r in records:
            self.retries += r.retries
            if id(r) not in ok_ids:
                self.errors[r.error or "no_output"] += 1
        self.completed += len(fig.records)
        self.total_input_tokens += int(fig.input_lens.sum())
        self.total_output_tokens += int(fig.output_tokens.sum())
        self.e2el_sum_s += float(fig.e2el_ms.sum()) / 1000.0
        for m in ALL_METRICS:
            self.metrics[m].add(fig.ms(m))
        self._add_reasoning(fig)
        if self.goodput_slos_ms:
            self.good_completed += int(good_mask(fig, self.goodput_slos_ms).sum())
        for r in fig.records:
            self.sources[r.output_tokens_source or "unknown"] += 1
            if r.invisible_tokens:
                self.invisible_outputs += 1
                self.invisible_tokens += r.invisible_tokens
            if r.cached_tokens is not None:
                self.cache_reported += 1
                self.cached_tokens += r.cached_tokens
                self.cache_prompt_tokens += r.server_prompt_tokens if r.server_prompt_tokens is not None \
                    else r.input_len
            if r.server_prompt_tokens is not None:
                self.prompt_tokens_checked += 1
                diff = abs(r.server_prompt_tokens - r.input_len)
                if diff:
                    self.prompt_token_mismatches += 1
                    self.prompt_token_max_diff = max(self.prompt_token_max_diff, diff)
        if self.sessions is not None or records[0].session >= 0:
            self.sessions = self.sessions or SessionFigures()
            self.sessions.add(records, fig.records, fig.ttft_ms)
        self._keep_inline(records, fig)

    def _add_reasoning(self, fig) -> None:  # noqa: ANN001 - RequestFigures
        rs = fig.reasoning
        reasoned = rs.reasoned
        self.reasoning_requests += int(reasoned.sum())
        self.no_answer += int(rs.no_answer.sum())
        self.total_reasoning_tokens += int(rs.reasoning_tokens.sum())
        self.total_answer_tokens += int(rs.answer_tokens.sum())
        from_usage = int((rs.from_usage & reasoned).sum())
        if from_usage:
            self.reasoning_sources["usage"] += from_usage
        if int(reasoned.sum()) > from_usage:
            self.reasoning_sources["deltas"] += int(reasoned.sum()) - from_usage
        for r in fig.records:
            if r.unrecognised_field is not None:
                self.unrecognised_fields[r.unrecognised_field] += 1

    def _keep_inline(self, records: Sequence[RequestRecord], fig) -> None:  # noqa: ANN001 - RequestFigures
        if self.inline is None:
            return
        if self.num_requests > self.inline_limit:
            self.inline = None  # too many for the result JSON: the per-request store has them
            return
        index = {id(r): i for i, r in enumerate(fig.records)}
        for r in records:
            i = index.get(id(r))
            if i is None:
                kind = r.error or "no_output"
                self.inline.append(InlineRequest(r.prompt_id, r.input_len, 0, 0.0, np.zeros(0),
                                                 f"{kind}: {r.error_detail}" if r.error_detail else kind, r.output_text))
            else:
                self.inline.append(InlineRequest(r.prompt_id, r.input_len, int(r.output_tokens),
                                                 float(fig.ttft_ms[i]) / 1000.0,
                                                 fig.itls_of(i) / 1000.0, "", r.output_text))

    def merge(self, other: Aggregate) -> None:
        """Add another aggregate of a disjoint set of requests (another worker's)."""
        for m in ALL_METRICS:
            self.metrics[m].merge(other.metrics[m])
        for name in ("num_requests", "completed", "total_input_tokens", "total_output_tokens", "good_completed",
                     "prompt_tokens_checked", "prompt_token_mismatches", "retries", "invisible_outputs",
                     "invisible_tokens", "cache_reported", "cached_tokens", "cache_prompt_tokens",
                     "reasoning_requests", "no_answer", "total_reasoning_tokens", "total_answer_tokens",
                     "e2el_sum_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.prompt_token_max_diff = max(self.prompt_token_max_diff, other.prompt_token_max_diff)
        self.errors.update(other.errors)
        self.sources.update(other.sources)
        self.reasoning_sources.update(other.reasoning_sources)
        self.unrecognised_fields.update(other.unrecognised_fields)
        if other.sessions is not None:
            self.sessions = self.sessions or SessionFigures()
            self.sessions.merge(other.sessions)
        if self.inline is not None and other.inline is not None \
                and self.num_requests <= self.inline_limit:
            self.inline.extend(other.inline)
        else:
            self.inline = None

    # -- reading -------------------------------------------------------------

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def histograms(self) -> dict[str, object]:
        return {tag: self.metrics[tag].histogram() for tag in HISTOGRAM_TAGS}

    def inline_rows(self) -> list[InlineRequest] | None:
        """Per-request rows in prompt order, or None when the point was too large to keep them."""
        return None if self.inline is None else sorted(self.inline, key=lambda r: r.prompt_id)

    def summary(
        self,
        start_ns: int,
        end_ns: int,
        *,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        lag_samples_ns: Sequence[int] = (),
        max_concurrency_observed: int = 0,
        saturation_lag_p99_ms: float = SATURATION_LAG_P99_MS,
    ) -> Summary:
        duration = max((end_ns - start_ns) / 1e9, 1e-9)
        lag = np.asarray(lag_samples_ns, dtype=np.float64) / NS_PER_MS
        lag_p50, lag_p99 = (float(x) for x in np.percentile(lag, [50, 99])) if lag.size else (0.0, 0.0)
        total_in, total_out = self.total_input_tokens, self.total_output_tokens
        return Summary(
            duration_s=duration,
            num_requests=self.num_requests,
            completed=self.completed,
            failed=self.failed,
            errors_by_kind=dict(sorted(self.errors.items())),
            total_input_tokens=total_in,
            total_output_tokens=total_out,
            request_throughput=self.completed / duration,
            input_throughput=total_in / duration,
            output_throughput=total_out / duration,
            total_token_throughput=(total_in + total_out) / duration,
            good_completed=self.good_completed if self.goodput_slos_ms else None,
            request_goodput=self.good_completed / duration if self.goodput_slos_ms else None,
            stats={m: self.metrics[m].stats(percentiles) for m in ALL_METRICS},
            output_tokens_source=dict(self.sources),
            prompt_tokens_checked=self.prompt_tokens_checked,
            prompt_token_mismatches=self.prompt_token_mismatches,
            prompt_token_max_diff=self.prompt_token_max_diff,
            lag_p50_ms=lag_p50,
            lag_p99_ms=lag_p99,
            lag_max_ms=float(lag.max()) if lag.size else 0.0,
            client_saturated=lag_p99 > saturation_lag_p99_ms,
            retries=self.retries,
            max_concurrency_observed=max_concurrency_observed,
            invisible_outputs=self.invisible_outputs,
            invisible_tokens=self.invisible_tokens,
            cache_reported=self.cache_reported,
            cached_tokens=self.cached_tokens,
            cache_prompt_tokens=self.cache_prompt_tokens,
            mean_concurrency=self.e2el_sum_s / duration,
            reasoning_requests=self.reasoning_requests,
            no_answer=self.no_answer,
            total_reasoning_tokens=self.total_reasoning_tokens,
            total_answer_tokens=self.total_answer_tokens,
            reasoning_tokens_source=dict(self.reasoning_sources),
            unrecognised_fields=dict(self.unrecognised_fields),
        )


def summarize(
    records: Sequence[RequestRecord],
    start_ns: int,
    end_ns: int,
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    goodput_slos_ms: Mapping[str, float] | None = None,
    lag_samples_ns: Sequence[int] = (),
    saturation_lag_p99_ms: float = SATURATION_LAG_P99_MS,
) -> Summary:
    """Every aggregate of one point from records held in memory (warm-up ones are skipped).

    The same arithmetic as a streamed run: one batch through :class:`Aggregate`.
    """
    measured = [r for r in records if not r.warmup]
    agg = Aggregate(goodput_slos_ms=goodput_slos_ms, inline_limit=0)
    agg.add(measured)
    return agg.summary(start_ns, end_ns, percentiles=percentiles, lag_samples_ns=lag_samples_ns,
                       max_concurrency_observed=max_in_flight(measured),
                       saturation_lag_p99_ms=saturation_lag_p99_ms)
