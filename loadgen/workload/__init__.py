"""Prompt sources. Every source yields :class:`loadgen.records.Prompt` records.

``build_prompts(spec)`` is the one entry point: it checks the spec, serves the set
from the on-disk cache when it was built before, otherwise builds it (``random``,
``sharegpt`` or ``jsonl``), checks the built lengths against the tokenizer's own
public API, and caches it. ``verify_with_server`` then lets the server count a
sample before the clock starts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from loadgen.records import Prompt
from loadgen.workload.cache import cache_path, load, save
from loadgen.workload.errors import WorkloadError
from loadgen.workload.fit import TokenizerView, view_of
from loadgen.workload.jsonl import build_jsonl
from loadgen.workload.lengths import length_bounds
from loadgen.workload.random_prompts import build_random
from loadgen.workload.sharegpt import build_sharegpt
from loadgen.workload.spec import WorkloadSpec
from loadgen.workload.tokenizer import TokenizerError, load_tokenizer, tokenizer_fingerprint
from loadgen.workload.verify import (
    MismatchSummary,
    VerifyResult,
    prompt_token_mismatches,
    verify_with_server,
)

__all__ = [
    "MismatchSummary",
    "Prompt",
    "VerifyResult",
    "WorkloadError",
    "WorkloadSpec",
    "build_prompts",
    "check_lengths",
    "prompt_token_mismatches",
    "validate_spec",
    "verify_with_server",
]

DATASETS = ("random", "sharegpt", "jsonl")
FULL_CHECK_TOKENS = 300_000  # below this every prompt is re-counted; above, a sample
CHECK_SAMPLE = 64


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
    if spec.dataset != "random" and not spec.dataset_path:
        raise WorkloadError(f"the {spec.dataset} dataset needs --dataset-path to a local file")
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
    chosen: Sequence[Prompt] = prompts
    if sample is not None and 0 < sample < len(prompts):
        step = len(prompts) / sample
        chosen = [prompts[int(i * step)] for i in range(sample)]
    bad = []
    for p in chosen:
        if p.messages is not None:
            counted = len(
                tokenizer.apply_chat_template(p.messages, tokenize=True, add_generation_prompt=True, return_dict=False)
            )
        else:
            counted = len(tokenizer.encode(p.text))
        if counted != p.input_len:
            bad.append((p.id, p.input_len, counted))
    return bad


def _check_sample(prompts: Sequence[Prompt]) -> int | None:
    return None if sum(p.input_len for p in prompts) <= FULL_CHECK_TOKENS else CHECK_SAMPLE


@dataclasses.dataclass
class BuildInfo:
    """How the last ``build_prompts`` call got its set (for benchmarks and debugging)."""

    source: str = ""  # "cache" | "built"
    fitter: str = ""  # random prompts: "window" (fast cut) or "loop" (decode/re-encode)
    rebuilt: bool = False  # the fast set failed its re-count and was rebuilt with the loop
    seconds: float = 0.0

    def reset(self) -> None:
        self.source, self.fitter, self.rebuilt, self.seconds = "", "", False, 0.0


last_build = BuildInfo()


def _build(view: TokenizerView, spec: WorkloadSpec) -> list[Prompt]:
    if spec.dataset == "sharegpt":
        return build_sharegpt(view, spec)
    if spec.dataset == "jsonl":
        return build_jsonl(view, spec)
    last_build.fitter = "window" if view.window else "loop"
    prompts = build_random(view, spec)
    if check_lengths(view.tok, prompts, _check_sample(prompts)):
        # The fast fitter's assumptions do not hold for this tokenizer: count everything.
        last_build.fitter, last_build.rebuilt = "loop", True
        prompts = build_random(view, spec, general=True)
        bad = check_lengths(view.tok, prompts, _check_sample(prompts))
        if bad:
            pid, built, counted = bad[0]
            raise WorkloadError(
                f"prompt {pid} was built to {built} tokens but the tokenizer counts {counted}: "
                "this tokenizer is not deterministic about its own output; use another --tokenizer"
            )
    return prompts


def build_prompts(spec: WorkloadSpec, tokenizer: Any = None, *, use_cache: bool = True) -> list[Prompt]:
    """The prompt set for ``spec``, from the cache when it was built before.

    ``tokenizer`` must be the one ``spec.tokenizer`` names (it is only a way to
    avoid loading it twice); the cache is keyed by the files ``spec.tokenizer``
    points at, plus every spec field and the dataset file's identity.
    """
    validate_spec(spec)
    started = time.perf_counter()
    last_build.reset()
    try:
        fingerprint = tokenizer_fingerprint(spec.tokenizer)
        path = cache_path(spec, fingerprint)
        if use_cache:
            cached = load(path)
            if cached is not None:
                last_build.source, last_build.seconds = "cache", time.perf_counter() - started
                return cached
        tok = tokenizer if tokenizer is not None else load_tokenizer(spec.tokenizer)
    except TokenizerError as exc:
        raise WorkloadError(str(exc)) from None
    prompts = _build(view_of(tok), spec)
    if use_cache:
        save(path, spec, fingerprint, prompts)
    last_build.source, last_build.seconds = "built", time.perf_counter() - started
    return prompts


def spec_with(spec: WorkloadSpec, **changes: Any) -> WorkloadSpec:
    """A copy of ``spec`` with some fields changed (sweeps build one set per point)."""
    return dataclasses.replace(spec, **changes)
