"""The small vocabulary server metrics are normalised into, as data.

vLLM renamed several metrics between 0.8 and current versions, and SGLang has
its own names for the same ideas. Each concept lists the raw Prometheus sample
names that carry it, in order of preference (the current name first); the first
one a page has wins and is recorded, so a reader can always see which raw
series a figure came from. Adding an engine or a rename is a data change here.

Counter names are the wire names (``_total`` suffix); histogram names are the
family names (``_sum``/``_count``/``_bucket`` are added when reading).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Concept:
    """One normalised quantity and the raw names that carry it.

    ``agg`` says how several label sets (vLLM data-parallel engines, SGLang ranks)
    combine: counts add up, fractions average.
    """

    key: str
    kind: str  # gauge | counter | histogram
    names: tuple[str, ...]
    agg: str = "sum"  # sum | mean
    doc: str = ""


CONCEPTS: tuple[Concept, ...] = (
    Concept("running", "gauge", ("vllm:num_requests_running", "sglang:num_running_reqs"),
            doc="requests in the running batch"),
    Concept("waiting", "gauge", ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
            doc="requests queued at the server, not yet scheduled"),
    Concept("kv_usage", "gauge", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
            agg="mean", doc="KV cache in use, 0..1"),
    Concept("preemptions", "counter", ("vllm:num_preemptions_total",),
            doc="requests preempted (their KV freed, recomputed later)"),
    Concept("prefix_cache_hits", "counter", ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total",
                                             "sglang:cached_tokens_total"),
            doc="prompt tokens found in the prefix cache (SGLang 0.5: against all its prompt tokens)"),
    Concept("prefix_cache_queries", "counter",
            ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
            doc="prompt tokens looked up in the prefix cache"),
    Concept("prefix_hit_rate", "gauge", ("sglang:cache_hit_rate", "vllm:gpu_prefix_cache_hit_rate"), agg="mean",
            doc="prefix-cache hit rate as the engine reports it, 0..1"),
    Concept("prompt_tokens", "counter", ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total"),
            doc="prompt tokens processed"),
    Concept("generation_tokens", "counter", ("vllm:generation_tokens_total", "sglang:generation_tokens_total"),
            doc="output tokens generated"),
    Concept("gen_throughput", "gauge", ("sglang:gen_throughput",), doc="engine's own output tokens/s"),
    Concept("ttft", "histogram", ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds"),
            doc="server-side time to first token"),
    Concept("itl", "histogram", ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds",
                                 "sglang:inter_token_latency_seconds"),
            doc="server-side inter-token latency (vLLM 0.8's time_per_output_token is per token)"),
    Concept("tpot", "histogram", ("vllm:request_time_per_output_token_seconds",),
            doc="server-side time per output token, per request"),
    Concept("e2el", "histogram", ("vllm:e2e_request_latency_seconds", "sglang:e2e_request_latency_seconds"),
            doc="server-side request latency"),
    Concept("queue", "histogram", ("vllm:request_queue_time_seconds",), doc="time waiting for a slot"),
    Concept("sim_lag", "histogram", ("sim:step_lateness_seconds",),
            doc="sim only: its event-loop lag, each engine step's start minus its planned start"),
    Concept("sim_model_time", "counter", ("sim:model_time_seconds_total",),
            doc="sim only: engine time its timing model planned (steps' durations)"),
)

BY_KEY: dict[str, Concept] = {c.key: c for c in CONCEPTS}
SCALARS = tuple(c for c in CONCEPTS if c.kind != "histogram")
HISTOGRAMS = tuple(c for c in CONCEPTS if c.kind == "histogram")
ENGINE_PREFIXES = {"vllm:": "vllm", "sglang:": "sglang", "sim:": "sim"}

# Every raw name the vocabulary reads, with histogram sub-series, for a fast filter.
WANTED: frozenset[str] = frozenset(
    [n for c in SCALARS for n in c.names]
    + [f"{n}{s}" for c in HISTOGRAMS for n in c.names for s in ("_sum", "_count", "_bucket")]
)


def engine_of(names: Mapping[str, object] | set[str]) -> str | None:
    """Which engine wrote a page, from its name prefixes (the sim writes vLLM's names too)."""
    seen = {eng for name in names for prefix, eng in ENGINE_PREFIXES.items() if name.startswith(prefix)}
    if "sim" in seen:
        return "sim"
    for eng in ("vllm", "sglang"):
        if eng in seen:
            return eng
    return None


def choose_names(present: set[str]) -> dict[str, str]:
    """concept → the raw name this page carries it under (first preference present)."""
    chosen: dict[str, str] = {}
    for c in CONCEPTS:
        for name in c.names:
            probe = f"{name}_count" if c.kind == "histogram" else name
            if probe in present:
                chosen[c.key] = name
                break
    return chosen


def vllm_generation(names: dict[str, str]) -> str | None:
    """'0.8-style' or 'current' from the KV name used: the clearest of vLLM's renames."""
    kv = names.get("kv_usage", "")
    if kv == "vllm:gpu_cache_usage_perc":
        return "0.8-style names"
    if kv == "vllm:kv_cache_usage_perc":
        return "current names"
    return None
