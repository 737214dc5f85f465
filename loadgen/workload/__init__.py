"""Prompt sources. Every source yields :class:`loadgen.records.Prompt` records.

``build_prompts(spec)`` is the one entry point: it checks the spec, serves the set
from the on-disk cache when it was built before (without loading the tokenizer),
otherwise loads the tokenizer, builds the set (``random``, ``sharegpt`` or
``jsonl``), checks the built lengths against the tokenizer's own public API, and
caches it. ``verify_with_server`` then lets the server count a sample before the
clock starts.

A caller that can take the check later (``defer_check=True``: the CLI) gets a random
set built from the tokenizer's stored piece table without loading the tokenizer at
all, and re-counts it with :class:`~loadgen.workload.recount.Recount` in a process of
its own: the tokenizer is most of a cold start.

Importing this package is cheap (no numpy, no tokenizer library, no HTTP client):
the builders are imported when a set is actually built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.records import Prompt
from loadgen.workload.cache import cache_path, cacheable, load, save
from loadgen.workload.errors import WorkloadError
from loadgen.workload.lengths import length_bounds
from loadgen.workload.spec import DATASETS, TRACE_DATASETS, WorkloadSpec
from loadgen.workload.tokenizer import (
    Tokenizer,
    TokenizerError,
    load_tokenizer,
    loaded_tokenizer,
    tokenizer_fingerprint,
)
from loadgen.workload.verify import (
    MismatchSummary,
    VerifyResult,
    prompt_token_mismatches,
    spread,
    verify_with_server,
)

if TYPE_CHECKING:
    from loadgen.workload.fit import TokenizerView
    from loadgen.workload.replay import ReplayOptions
    from loadgen.workload.trace_prompts import TraceSet
    from loadgen.workload.traces import Trace

__all__ = [
    "DATASETS",
    "MismatchSummary",
    "Prompt",
    "VerifyResult",
    "WorkloadError",
    "WorkloadSpec",
    "build_prompts",
    "build_trace",
    "check_lengths",
    "check_sample",
    "prompt_token_mismatches",
    "validate_spec",
    "verify_with_server",
]

CHECK_TOKENS = 65_536  # up to this many prompt tokens every prompt is re-counted; above, a sample this big
CHECK_SAMPLE = 64  # and never fewer prompts than this


def validate_spec(spec: WorkloadSpec) -> None:
    """Reject a bad spec with one line naming the option and a valid value."""
    if spec.dataset not in DATASETS:
        raise WorkloadError(f"unknown dataset '{spec.dataset}': use one of {', '.join(DATASETS)}")
    if spec.num_prompts < 1:
        raise WorkloadError(f"--num-prompts must be at least 1, got {spec.num_prompts}")
    if spec.input_len < 1:
        raise WorkloadError(f"--input-len must be at least 1, got {spec.input_len}")
    if spec.output_len < 1:
        raise WorkloadError(f"--output-len must be at least 1, got {spec.output_len}")
    length_bounds(spec.input_len, spec.range_ratio)
    if spec.output_range_ratio is not None:
        length_bounds(spec.output_len, spec.output_range_ratio)
    if spec.input_len_counts not in ("total", "content"):
        raise WorkloadError(f"--input-len-counts must be 'total' or 'content', got '{spec.input_len_counts}'")
    if spec.prefix_len < 0 or spec.num_prefixes < 0:
        raise WorkloadError("--prefix-len and --num-prefixes must not be negative")
    if spec.num_prefixes and not spec.prefix_len:
        raise WorkloadError("--num-prefixes needs --prefix-len K (the shared prefix length in tokens)")
    if spec.prefix_len and spec.dataset != "random":
        raise WorkloadError("--prefix-len applies to the random dataset only")
    if spec.dataset == "sessions":
        from loadgen.workload.sessions import session_dists

        session_dists(spec)
    if spec.dataset not in ("random", "sessions") and not spec.dataset_path:
        raise WorkloadError(f"the {spec.dataset} dataset needs --dataset-path to a local file")
    if spec.dataset in TRACE_DATASETS and spec.block_size < 1:
        raise WorkloadError(f"--block-size must be at least 1 token, got {spec.block_size}")
    if spec.dataset == "sharegpt" and not (0 <= spec.min_input_len <= spec.max_input_len <= spec.max_total_len):
        raise WorkloadError(
            "ShareGPT filters must satisfy 0 <= min input length <= max input length <= max total length"
        )


def check_lengths(tokenizer: Any, prompts: Sequence[Prompt], sample: int | None = None) -> list[tuple[int, int, int]]:
    """Re-count prompts through the tokenizer's public API, as a server would.

    Text: ``len(tokenizer.encode(text))``; chat: ``len(apply_chat_template(messages,
    tokenize=True, add_generation_prompt=True))``. Independent of the fast paths that
    built the set, so it catches a fitter whose assumptions do not hold. Returns
    ``(prompt id, built, counted)`` for every disagreement.
    """
    chosen = spread(prompts, sample)
    if isinstance(tokenizer, Tokenizer):  # the same counts, in batches on the library's threads
        counted_all = [0] * len(chosen)
        text = [i for i, p in enumerate(chosen) if p.messages is None]
        chat = [i for i, p in enumerate(chosen) if p.messages is not None]
        for i, ids in zip(text, tokenizer.encode_batch([chosen[i].text or "" for i in text]), strict=True):
            counted_all[i] = len(ids)
        rendered = [tokenizer.render_chat(chosen[i].messages, add_generation_prompt=True) for i in chat]
        for i, ids in zip(chat, tokenizer.encode_batch(rendered, add_special_tokens=False), strict=True):
            counted_all[i] = len(ids)
    else:
        counted_all = [
            len(tokenizer.apply_chat_template(p.messages, tokenize=True, add_generation_prompt=True, return_dict=False))
            if p.messages is not None else len(tokenizer.encode(p.text))
            for p in chosen
        ]
    return [(p.id, p.input_len, c) for p, c in zip(chosen, counted_all, strict=True) if c != p.input_len]


def check_sample(prompts: Sequence[Prompt]) -> Sequence[Prompt]:
    """The prompts :func:`check_lengths` re-counts after a build."""
    return spread(prompts, _check_sample(prompts))


def _check_sample(prompts: Sequence[Prompt]) -> int | None:
    """Every prompt of a small set; for a large one, a spread sample of about ``CHECK_TOKENS``."""
    total = sum(p.input_len for p in prompts)
    if total <= CHECK_TOKENS:
        return None
    return max(CHECK_SAMPLE, math.ceil(CHECK_TOKENS * len(prompts) / total))


@dataclasses.dataclass
class BuildInfo:
    """How the last ``build_prompts`` call got its set (for benchmarks and debugging)."""

    source: str = ""  # "cache" | "built"
    fitter: str = ""  # random prompts: "pieces" (no encode), "window" (fast cut) or "loop" (decode/re-encode)
    rebuilt: bool = False  # the fast set failed its re-count and was rebuilt with the loop
    seconds: float = 0.0
    checked: int | None = None  # prompts re-counted while building; None: not re-counted (cached, or deferred)
    deferred: bool = False  # built from a stored piece table, no tokenizer loaded: re-count it later
    fingerprint: str = ""  # of the tokenizer, which keys the caches
    cache_file: Path | None = None  # where the set is cached

    def reset(self) -> None:
        self.source, self.fitter, self.rebuilt, self.seconds = "", "", False, 0.0
        self.checked, self.deferred, self.fingerprint, self.cache_file = None, False, "", None


last_build = BuildInfo()


def _build(view: TokenizerView, spec: WorkloadSpec) -> list[Prompt]:
    if spec.dataset == "sessions":
        from loadgen.workload.sessions import build_sessions, check_sessions

        prompts = build_sessions(view, spec)
        last_build.checked = check_sessions(view, prompts, check_lengths)
        return prompts
    if spec.dataset == "sharegpt":
        from loadgen.workload.sharegpt import build_sharegpt

        return build_sharegpt(view, spec)
    if spec.dataset == "jsonl":
        from loadgen.workload.jsonl import build_jsonl

        return build_jsonl(view, spec)
    from loadgen.workload.random_prompts import build_random, method_for

    last_build.fitter = method_for(view, spec)
    prompts = build_random(view, spec, method=last_build.fitter)
    sample = check_sample(prompts)
    last_build.checked = len(sample)  # a rebuilt set has the same lengths, so the same sample size
    if check_lengths(view.tok, sample):
        # The fast fitter's assumptions do not hold for this tokenizer: count everything.
        last_build.fitter, last_build.rebuilt = "loop", True
        prompts = build_random(view, spec, general=True)
        bad = check_lengths(view.tok, check_sample(prompts))
        if bad:
            pid, built, counted = bad[0]
            raise WorkloadError(
                f"prompt {pid} was built to {built} tokens but the tokenizer counts {counted}: "
                "this tokenizer is not deterministic about its own output; use another --tokenizer"
            )
    return prompts


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Creating a million prompt records triggers the cyclic collector over and over (it
    counts allocations) and doubles the time; the records hold no cycles, so pause it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def build_prompts(spec: WorkloadSpec, tokenizer: Any = None, *, use_cache: bool = True,
                  defer_check: bool = False) -> list[Prompt]:
    """The prompt set for ``spec``, from the cache when it was built before.

    The tokenizer is loaded only on a cache miss (``tokenizer``, when given, must be
    the one ``spec.tokenizer`` names; it only saves loading it twice). The cache is
    keyed by a hash of the files ``spec.tokenizer`` points at, every spec field and
    the dataset file's identity.

    ``defer_check``: unless this process has loaded the tokenizer already, a random set
    may be built from the stored piece table without it; ``last_build.deferred`` then
    says the caller owes the set a re-count (:class:`~loadgen.workload.recount.Recount`).
    """
    validate_spec(spec)
    if spec.dataset in TRACE_DATASETS:  # built whole here (the CLI builds traces lazily: build_trace)
        from loadgen.workload.replay import ReplayOptions

        return list(build_trace(spec, ReplayOptions(limit=spec.num_prompts), tokenizer).prompts)
    if spec.dataset == "sessions":
        if defer_check and tokenizer is None and loaded_tokenizer(spec.tokenizer) is None:
            # the client never loads the tokenizer: the set is built in a fresh process
            from loadgen.workload.sidecar import build_apart

            last_build.reset()
            started = time.perf_counter()
            prompts, last_build.checked = build_apart(spec)
            last_build.source, last_build.seconds = "built", time.perf_counter() - started
            return prompts
        use_cache = defer_check = False  # sessions are built in seconds, and count replies at run time
    if defer_check and tokenizer is None:
        # loaded here already (a notebook, a second sweep): counting now costs only the encode
        tokenizer = loaded_tokenizer(spec.tokenizer)
    with _gc_paused():
        return _build_or_load(spec, tokenizer, use_cache, defer_check and tokenizer is None)


def _build_or_load(spec: WorkloadSpec, tokenizer: Any, use_cache: bool, defer_check: bool) -> list[Prompt]:
    started = time.perf_counter()
    last_build.reset()
    use_cache = use_cache and cacheable(spec)
    try:
        fingerprint = last_build.fingerprint = tokenizer_fingerprint(spec.tokenizer)
        path = cache_path(spec, fingerprint)
        last_build.cache_file = path if use_cache else None
        if use_cache:
            cached = load(path)
            if cached is not None:
                last_build.source, last_build.seconds = "cache", time.perf_counter() - started
                return cached
        prompts = _from_table(spec, fingerprint) if defer_check else None
        if prompts is None:
            tok = tokenizer if tokenizer is not None else load_tokenizer(spec.tokenizer)
    except TokenizerError as exc:
        raise WorkloadError(str(exc)) from None
    if prompts is None:
        from loadgen.workload.fit import view_of

        prompts = _build(view_of(tok), spec)
    if use_cache:
        save(path, spec, fingerprint, prompts)
    last_build.source, last_build.seconds = "built", time.perf_counter() - started
    return prompts


def _from_table(spec: WorkloadSpec, fingerprint: str) -> list[Prompt] | None:
    """A random set from the stored piece table, no tokenizer loaded; None when there is
    no table for this tokenizer yet, or it does not cover the spec."""
    if spec.dataset != "random":
        return None
    from loadgen.workload import pieces
    from loadgen.workload.random_prompts import build_from_table

    found = pieces.cached(fingerprint)
    prompts = build_from_table(*found, spec) if found is not None else None
    if prompts is not None:
        last_build.fitter, last_build.deferred = "pieces", True
    return prompts


def build_trace(spec: WorkloadSpec, replay: ReplayOptions, tokenizer: Any = None, *,
                max_model_len: int | None = None, trace: Trace | None = None) -> TraceSet:
    """A trace replay (``spec.dataset`` one of ``TRACE_DATASETS``): the file read and checked,
    rows the server cannot take counted (``max_model_len``), release offsets, and prompts built
    when the runner asks for each, so a long trace never sits in memory as text.

    A spread sample of the prompts is built now and re-counted with the tokenizer
    (``last_build.checked``); a disagreement is an error before anything is sent. ``trace``:
    the file already read (``read_trace``), else it is read here.
    """
    validate_spec(spec)
    from loadgen.workload.fit import view_of
    from loadgen.workload.trace_prompts import Lengths, build_replay
    from loadgen.workload.traces import read_trace

    started = time.perf_counter()
    last_build.reset()
    try:
        tok = tokenizer if tokenizer is not None else load_tokenizer(spec.tokenizer)
    except TokenizerError as exc:
        raise WorkloadError(str(exc)) from None
    if trace is None:
        trace = read_trace(spec.dataset_path or "", spec.dataset, spec.block_size)
    replay_set = build_replay(view_of(tok), trace, replay, chat=spec.chat, block_size=spec.block_size,
                              seed=spec.seed, max_model_len=max_model_len)
    prompts = replay_set.prompts
    sample = check_sample(Lengths(prompts))
    bad = check_lengths(tok, [prompts[p.id] for p in sample])
    if bad:
        pid, built, counted = bad[0]
        raise WorkloadError(f"trace row {pid} was built to {built} tokens but the tokenizer counts {counted}: "
                            "the tokenizer's piece table is stale; delete ~/.cache/loadgen/tokenizers and run again")
    last_build.source, last_build.fitter, last_build.checked = "built", "pieces", len(sample)
    last_build.seconds = time.perf_counter() - started
    return replay_set


def spec_with(spec: WorkloadSpec, **changes: Any) -> WorkloadSpec:
    """A copy of ``spec`` with some fields changed (sweeps build one set per point)."""
    return dataclasses.replace(spec, **changes)
