"""The ``random`` dataset: unique prompts of exact length from random ordinary tokens.

Every prompt is built from its own random stream, seeded by ``(seed, index,
attempt)``, so the set is the same whether it is built in one process or in a pool,
and a prompt that must be rebuilt (a duplicate start) changes nothing else.
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadgen.records import Prompt
from loadgen.workload.errors import WorkloadError
from loadgen.workload.fit import FitError, TokenizerView
from loadgen.workload.lengths import sample_lengths
from loadgen.workload.spec import WorkloadSpec

MAX_TOTAL_ITERS = 8  # rounds of "fit content, count the whole prompt" per attempt
MAX_PREFIX_JOIN_TRIES = 16
MAX_ATTEMPTS = 24  # fresh random draws per prompt (duplicates, unlucky fits)
POOL_MIN_TOKENS = 400_000
# Prompts must differ within their first few tokens (a prefix cache then has nothing
# to share). Four, not one: some tokenizers open every text with the same marker.
UNIQUE_START = 4  # below this a pool costs more than it saves
_SALT_CONTENT, _SALT_PREFIX, _SALT_INPUT_LENS, _SALT_OUTPUT_LENS = 1, 2, 3, 4


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs besides the tokenizer; small and picklable."""

    seed: int
    chat: bool
    counts_content: bool
    prefix_texts: tuple[str, ...] = ()
    prefix_ids: tuple[tuple[int, ...], ...] = ()
    general: bool = False  # classic fitter and full counts for every prompt

    @property
    def prefix_len(self) -> int:
        return len(self.prefix_ids[0]) if self.prefix_ids else 0


@dataclass(frozen=True)
class Built:
    index: int
    text: str
    input_len: int
    key: tuple[int, ...]


def _fit(view: TokenizerView, plan: Plan, n: int, rng: np.random.Generator) -> tuple[str, list[int]]:
    return view.fit_classic(n, rng) if plan.general else view.fit(n, rng)


def _content(
    view: TokenizerView, plan: Plan, n: int, group: int, rng: np.random.Generator
) -> tuple[str, tuple[int, ...]]:
    """Content of exactly ``n`` tokens and the ids that must be unique (its start)."""
    if not plan.prefix_ids:
        text, ids = _fit(view, plan, n, rng)
        return text, tuple(ids[:UNIQUE_START])
    k = plan.prefix_len
    head_text, head_ids = plan.prefix_texts[group], list(plan.prefix_ids[group])
    for _ in range(MAX_PREFIX_JOIN_TRIES):
        body, _ids = _fit(view, plan, n - k, rng)
        text = head_text + body
        ids = view.encode(text)
        # the join must not merge across the prefix, or the shared part is not K tokens
        if len(ids) == n and ids[:k] == head_ids:
            return text, (ids[k],)
    raise FitError(n)


def _server_count(view: TokenizerView, plan: Plan, text: str, n: int) -> int:
    """The prompt's length as the server counts it, for content of ``n`` tokens."""
    if not plan.chat:
        return view.count_text(text) if plan.general else view.bos + n
    frame = view.frame
    messages = [{"role": "user", "content": text}]
    if frame.isolated and not plan.general and view.render(messages) == frame.prefix + text + frame.suffix:
        return frame.overhead + n
    return view.count_messages(messages)


def build_one(view: TokenizerView, plan: Plan, index: int, target: int, attempt: int) -> Built:
    """One prompt of ``target`` tokens (the whole prompt, or its content)."""
    rng = np.random.default_rng([plan.seed, index, attempt, _SALT_CONTENT])
    group = index % len(plan.prefix_ids) if plan.prefix_ids else 0
    fixed = plan.chat and plan.counts_content
    extra = view.frame.overhead if plan.chat else view.bos
    n = target if fixed else target - extra
    for _ in range(MAX_TOTAL_ITERS):
        if n < plan.prefix_len + 1:
            raise FitError(target)
        text, key = _content(view, plan, n, group, rng)
        total = _server_count(view, plan, text, n)
        if fixed or total == target:
            return Built(index, text, total, key)
        n += target - total  # the template merged with the content; refit the whole
    raise FitError(target)


# --- running many builds, in a pool when it pays -------------------------------------
_STATE: tuple[TokenizerView, Plan] | None = None


def _run_chunk(jobs: list[tuple[int, int, int]]) -> list[Built | tuple[int, int]]:
    assert _STATE is not None
    view, plan = _STATE
    out: list[Built | tuple[int, int]] = []
    for index, target, attempt in jobs:
        try:
            out.append(build_one(view, plan, index, target, attempt))
        except FitError:
            out.append((index, target))
    return out


def _workers(total_tokens: int) -> int:
    if total_tokens < POOL_MIN_TOKENS or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    return max(0, min(os.cpu_count() or 1, 8))


def run_jobs(view: TokenizerView, plan: Plan, jobs: list[tuple[int, int, int]], workers: int) -> list[Built | tuple[int, int]]:
    """Build every job; forked workers inherit the loaded tokenizer (no reload)."""
    global _STATE
    _STATE = (view, plan)
    try:
        if workers <= 1 or len(jobs) < 2 * workers:
            return _run_chunk(jobs)
        size = max(1, len(jobs) // (workers * 8))
        chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        # The parent may have used the tokenizers thread pool; a forked child would warn
        # and switch it off anyway. Say so up front to keep stderr clean.
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                parts = pool.map(_run_chunk, chunks, chunksize=1)
        finally:
            if previous is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous
        return [b for part in parts for b in part]
    finally:
        _STATE = None


def _fit_error(target: int, plan: Plan) -> WorkloadError:
    what = "content tokens" if plan.chat and plan.counts_content else "tokens"
    return WorkloadError(
        f"could not fit a random prompt to exactly {target} {what} after {MAX_ATTEMPTS} attempts "
        "with this tokenizer; try another --seed or --input-len"
    )


def build_unique(
    view: TokenizerView, plan: Plan, targets: list[int], workers: int | None = None
) -> list[Built]:
    """Build every prompt, rebuilding later duplicates until each start is unique."""
    if workers is None:
        workers = _workers(sum(targets))
    done: dict[int, Built] = {}
    attempts = dict.fromkeys(range(len(targets)), 0)
    pending = [(i, t, 0) for i, t in enumerate(targets)]
    while pending:
        for item in run_jobs(view, plan, pending, workers):
            if isinstance(item, Built):
                done[item.index] = item
            else:
                index, target = item
                attempts[index] += 1
                if attempts[index] >= MAX_ATTEMPTS:
                    raise _fit_error(target, plan)
        seen: set[tuple[Any, ...]] = set()
        pending = []
        for index in range(len(targets)):
            built = done.get(index)
            if built is None:
                pending.append((index, targets[index], attempts[index]))
                continue
            group = index % len(plan.prefix_ids) if plan.prefix_ids else 0
            key = (group, built.key)
            if key in seen:
                del done[index]
                attempts[index] += 1
                if attempts[index] >= MAX_ATTEMPTS:
                    raise WorkloadError(
                        f"cannot make {len(targets)} prompts of {targets[index]} tokens start differently "
                        "with this tokenizer; lower --num-prompts or raise --input-len"
                    )
                pending.append((index, targets[index], attempts[index]))
            else:
                seen.add(key)
    return [done[i] for i in range(len(targets))]


def _prefixes(view: TokenizerView, spec: WorkloadSpec) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """``num_prefixes`` texts of exactly ``prefix_len`` tokens, each starting differently."""
    groups = max(1, spec.num_prefixes)
    texts: list[str] = []
    ids: list[tuple[int, ...]] = []
    firsts: set[int] = set()
    for g in range(groups):
        for attempt in range(MAX_ATTEMPTS):
            rng = np.random.default_rng([spec.seed, g, attempt, _SALT_PREFIX])
            try:
                text, got = view.fit(spec.prefix_len, rng)
            except FitError:
                continue
            if got[0] not in firsts or len(firsts) >= view.ordinary_ids.size:
                break
        else:
            raise WorkloadError(
                f"could not build {groups} distinct shared prefixes of {spec.prefix_len} tokens; "
                "lower --num-prefixes"
            )
        firsts.add(got[0])
        texts.append(text)
        ids.append(tuple(got))
    return tuple(texts), tuple(ids)


def _minimum_target(view: TokenizerView, spec: WorkloadSpec) -> tuple[int, str]:
    """The smallest length a prompt can have, and what makes it so (for the error)."""
    if spec.chat and spec.input_len_counts == "content":
        return spec.prefix_len + 1, "a message needs at least 1 token beyond the shared prefix"
    if spec.chat:
        over = view.frame.overhead
        why = f"the chat template adds {over} tokens and the message needs at least 1"
        if spec.prefix_len:
            why += f" beyond the {spec.prefix_len}-token shared prefix"
        return over + spec.prefix_len + 1, why + " (or use --input-len-counts content)"
    why = "a prompt needs at least 1 token"
    if view.bos:
        why = f"the server adds {view.bos} BOS token(s) and the text needs at least 1"
    if spec.prefix_len:
        why += f" beyond the {spec.prefix_len}-token shared prefix"
    return view.bos + spec.prefix_len + 1, why


def plan_for(view: TokenizerView, spec: WorkloadSpec, general: bool = False) -> Plan:
    texts: tuple[str, ...] = ()
    ids: tuple[tuple[int, ...], ...] = ()
    if spec.prefix_len:
        texts, ids = _prefixes(view, spec)
    return Plan(spec.seed, spec.chat, spec.input_len_counts == "content", texts, ids, general)


def input_lengths(spec: WorkloadSpec) -> list[int]:
    rng = np.random.default_rng([spec.seed, _SALT_INPUT_LENS])
    return sample_lengths(spec.input_len, spec.range_ratio, spec.num_prompts, rng)


def output_lengths(spec: WorkloadSpec) -> list[int]:
    ratio = spec.range_ratio if spec.output_range_ratio is None else spec.output_range_ratio
    rng = np.random.default_rng([spec.seed, _SALT_OUTPUT_LENS])
    return sample_lengths(spec.output_len, ratio, spec.num_prompts, rng)


def to_prompts(built: list[Built], outputs: list[int], chat: bool) -> list[Prompt]:
    if chat:
        return [
            Prompt(b.index, b.input_len, outputs[b.index], messages=[{"role": "user", "content": b.text}])
            for b in built
        ]
    return [Prompt(b.index, b.input_len, outputs[b.index], text=b.text) for b in built]


def build_random(view: TokenizerView, spec: WorkloadSpec, general: bool = False, workers: int | None = None) -> list[Prompt]:
    """The whole random prompt set for ``spec`` (not cached, not checked: see ``build_prompts``)."""
    targets = input_lengths(spec)
    floor, why = _minimum_target(view, spec)
    if min(targets) < floor:
        raise WorkloadError(
            f"input length {min(targets)} is too short: {why}; use --input-len of at least {floor}"
            + (" or a smaller --random-range-ratio" if spec.range_ratio else "")
        )
    plan = plan_for(view, spec, general)
    built = build_unique(view, plan, targets, workers)
    return to_prompts(built, output_lengths(spec), spec.chat)
