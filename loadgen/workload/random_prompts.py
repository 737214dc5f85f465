"""The ``random`` dataset: unique prompts of exact length from random ordinary tokens.

Three methods, fastest first (``method_for`` picks one):

* ``pieces``: random tokens from the tokenizer's piece table (tokens that re-encode to
  themselves when joined, see :mod:`loadgen.workload.pieces`), joined without any
  encode. One random stream per set, seeded by ``(seed, salt)``; a prompt whose start
  repeats an earlier one is redrawn from its own stream ``(seed, index, attempt)``.
* ``window`` and ``loop``: per-prompt fitters over the whole ordinary vocabulary
  (:mod:`loadgen.workload.fit`), each prompt from its own random stream ``(seed,
  index, attempt)``, so the set is the same whether built in one process or a pool.
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
from loadgen.workload.pieces import PieceFacts, PieceTable
from loadgen.workload.spec import WorkloadSpec

MAX_TOTAL_ITERS = 8  # rounds of "fit content, count the whole prompt" per attempt
MAX_PREFIX_JOIN_TRIES = 16
MAX_ATTEMPTS = 24  # fresh random draws per prompt (duplicates, unlucky fits)
POOL_MIN_TOKENS = 400_000  # below this a pool costs more than it saves
# Prompts must differ within their first few tokens (a prefix cache then has nothing
# to share). Four, not one: some tokenizers open every text with the same marker.
UNIQUE_START = 4
JOIN_BLOCK_TOKENS = 1 << 16  # pieces joined per string operation (bounds the temporary list)
_SALT_CONTENT, _SALT_PREFIX, _SALT_INPUT_LENS, _SALT_OUTPUT_LENS, _SALT_PIECES = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class PromptRecipe:
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


def _fit(view: TokenizerView, plan: PromptRecipe, n: int, rng: np.random.Generator) -> tuple[str, list[int]]:
    return view.fit_classic(n, rng) if plan.general else view.fit(n, rng)


def _content(
    view: TokenizerView, plan: PromptRecipe, n: int, group: int, rng: np.random.Generator
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


def _server_count(view: TokenizerView, plan: PromptRecipe, text: str, n: int) -> int:
    """The prompt's length as the server counts it, for content of ``n`` tokens."""
    if not plan.chat:
        return view.count_text(text) if plan.general else view.bos + n
    frame = view.frame
    messages = [{"role": "user", "content": text}]
    if frame.isolated and not plan.general and view.render(messages) == frame.prefix + text + frame.suffix:
        return frame.overhead + n
    return view.count_messages(messages)


def build_one(view: TokenizerView, plan: PromptRecipe, index: int, target: int, attempt: int) -> Built:
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
_STATE: tuple[TokenizerView, PromptRecipe] | None = None


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


def run_jobs(view: TokenizerView, plan: PromptRecipe, jobs: list[tuple[int, int, int]], workers: int) -> list[Built | tuple[int, int]]:
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


def _fit_error(target: int, plan: PromptRecipe) -> WorkloadError:
    what = "content tokens" if plan.chat and plan.counts_content else "tokens"
    return WorkloadError(
        f"could not fit a random prompt to exactly {target} {what} after {MAX_ATTEMPTS} attempts "
        "with this tokenizer; try another --seed or --input-len"
    )


def build_unique(
    view: TokenizerView, plan: PromptRecipe, targets: list[int], workers: int | None = None
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


def _minimum_target(spec: WorkloadSpec, bos: int, chat_overhead: int) -> tuple[int, str]:
    """The smallest length a prompt can have, and what makes it so (for the error)."""
    if spec.chat and spec.input_len_counts == "content":
        return spec.prefix_len + 1, "a message needs at least 1 token beyond the shared prefix"
    if spec.chat:
        why = f"the chat template adds {chat_overhead} tokens and the message needs at least 1"
        if spec.prefix_len:
            why += f" beyond the {spec.prefix_len}-token shared prefix"
        return chat_overhead + spec.prefix_len + 1, why + " (or use --input-len-counts content)"
    why = "a prompt needs at least 1 token"
    if bos:
        why = f"the server adds {bos} BOS token(s) and the text needs at least 1"
    if spec.prefix_len:
        why += f" beyond the {spec.prefix_len}-token shared prefix"
    return bos + spec.prefix_len + 1, why


def _targets(spec: WorkloadSpec, bos: int, chat_overhead: int) -> list[int]:
    """Every prompt's length, or a one-line error when the shortest cannot be built."""
    targets = input_lengths(spec)
    floor, why = _minimum_target(spec, bos, chat_overhead)
    if min(targets) < floor:
        raise WorkloadError(
            f"input length {min(targets)} is too short: {why}; use --input-len of at least {floor}"
            + (" or a smaller --random-range-ratio" if spec.range_ratio else "")
        )
    return targets


def plan_for(view: TokenizerView, spec: WorkloadSpec, general: bool = False) -> PromptRecipe:
    texts: tuple[str, ...] = ()
    ids: tuple[tuple[int, ...], ...] = ()
    if spec.prefix_len:
        texts, ids = _prefixes(view, spec)
    return PromptRecipe(spec.seed, spec.chat, spec.input_len_counts == "content", texts, ids, general)


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


# --- the pieces method ------------------------------------------------------------------
def _piece_prefixes(table: PieceTable, spec: WorkloadSpec) -> tuple[list[str], list[int]]:
    """``num_prefixes`` prefixes of exactly ``prefix_len`` pieces, each starting with a different piece."""
    groups = max(1, spec.num_prefixes)
    if groups > table.size:
        raise WorkloadError(
            f"could not build {groups} distinct shared prefixes of {spec.prefix_len} tokens; "
            f"lower --num-prefixes (at most {table.size} with this tokenizer)"
        )
    rng = np.random.default_rng([spec.seed, _SALT_PREFIX, _SALT_PIECES])
    firsts = rng.choice(table.size, size=groups, replace=False)
    index = rng.integers(0, table.size, size=(groups, spec.prefix_len))
    index[:, 0] = firsts
    return [table.join(row) for row in index], firsts.tolist()


def _unique_starts(table: PieceTable, spec: WorkloadSpec, index: np.ndarray, starts: np.ndarray,
                   body: np.ndarray) -> None:
    """Redraw, in place, the start of every prompt whose start an earlier prompt already has.

    The start is the first ``UNIQUE_START`` pieces (fewer in a shorter prompt), or with
    shared prefixes the first piece after the prefix, per group. Each round finds the
    repeats at once (a sort, not a Python loop: a million prompts take well under a
    second) and redraws them from the prompt's own stream ``(seed, i, round)``, so a
    redraw changes nothing else in the set.
    """
    groups = max(1, spec.num_prefixes) if spec.prefix_len else 0
    width = 1 if groups else UNIQUE_START
    count = len(starts)
    k = np.minimum(body, width)
    cols = starts[:, None] + np.arange(width)
    valid = np.arange(width) < k[:, None]
    group = (np.arange(count) % groups) if groups else np.zeros(count, dtype=np.int64)
    base = table.size + 1  # a start's pieces as digits base S+1, 0 where the prompt is shorter
    packed = base**width * max(groups, 1) < 2**63
    for attempt in range(1, MAX_ATTEMPTS + 1):
        digits = np.where(valid, index[np.minimum(cols, index.size - 1)].astype(np.int64) + 1, 0)
        if packed:  # one int64 per start: a plain sort
            rows = group * base**width + (digits * base ** np.arange(width, dtype=np.int64)).sum(axis=1)
            _, first = np.unique(rows, return_index=True)
        else:
            _, first = np.unique(np.concatenate([group[:, None], digits], axis=1), axis=0, return_index=True)
        repeat = np.ones(count, dtype=bool)
        repeat[first] = False
        redo = np.flatnonzero(repeat)
        if redo.size == 0:
            return
        if attempt == MAX_ATTEMPTS:
            i = int(redo[0])
            raise WorkloadError(
                f"cannot make {count} prompts of {int(body[i])} tokens start differently "
                "with this tokenizer; lower --num-prompts or raise --input-len"
            )
        for i in redo.tolist():
            rng = np.random.default_rng([spec.seed, i, attempt, _SALT_PIECES])
            o, n = int(starts[i]), int(k[i])
            index[o : o + n] = rng.integers(0, table.size, size=n)


def build_pieces(table: PieceTable, spec: WorkloadSpec, targets: list[int], bos: int, chat_overhead: int) -> list[Prompt]:
    """Every prompt as random pieces: exact by construction, no encode per prompt, no tokenizer."""
    fixed = spec.chat and spec.input_len_counts == "content"
    extra = chat_overhead if spec.chat else bos
    content = np.asarray(targets, dtype=np.int64) - (0 if fixed else extra)
    counted = (content + extra).tolist()  # the server's count: template or BOS on top of the content
    k = spec.prefix_len
    body = content - k
    ends = np.cumsum(body)
    starts = ends - body
    rng = np.random.default_rng([spec.seed, _SALT_CONTENT, _SALT_PIECES])
    index = rng.integers(0, table.size, size=int(ends[-1]), dtype=np.int32)
    _unique_starts(table, spec, index, starts, body)

    texts: list[str] = []
    first = 0
    while first < len(targets):
        # join a block of prompts at once, then cut each prompt's text out of it
        last = max(first + 1, int(np.searchsorted(ends, starts[first] + JOIN_BLOCK_TOKENS, side="right")))
        block = index[starts[first] : ends[last - 1]]
        joined = table.join(block)
        cuts = np.concatenate(([0], np.cumsum(table.lengths[block])))[
            np.concatenate(([0], ends[first:last] - starts[first]))
        ].tolist()
        texts += [joined[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        first = last
    del index
    if k:
        prefix_texts, _firsts = _piece_prefixes(table, spec)
        groups = len(prefix_texts)
        texts = [prefix_texts[i % groups] + t for i, t in enumerate(texts)]
    outputs = output_lengths(spec)
    if spec.chat:
        return [Prompt(i, c, o, messages=[{"role": "user", "content": t}])
                for i, (c, o, t) in enumerate(zip(counted, outputs, texts, strict=True))]
    return [Prompt(i, c, o, text=t) for i, (c, o, t) in enumerate(zip(counted, outputs, texts, strict=True))]


def method_for(view: TokenizerView, spec: WorkloadSpec, general: bool = False) -> str:
    """``pieces`` when the tokenizer has a piece table (and, for chat, the template keeps
    piece-shaped content intact between special tokens), else ``window`` or ``loop``."""
    if general:
        return "loop"
    table = view.pieces
    if table is not None and (not spec.chat or view.frames_pieces(table.head())):
        return "pieces"
    return "window" if view.window else "loop"


def build_random(
    view: TokenizerView, spec: WorkloadSpec, general: bool = False, workers: int | None = None,
    method: str | None = None,
) -> list[Prompt]:
    """The whole random prompt set for ``spec`` (not cached, not checked: see ``build_prompts``)."""
    overhead = view.frame.overhead if spec.chat else 0
    targets = _targets(spec, view.bos, overhead)
    method = method or method_for(view, spec, general)
    if method == "pieces" and view.pieces is not None:
        return build_pieces(view.pieces, spec, targets, view.bos, overhead)
    plan = plan_for(view, spec, general or method == "loop")
    built = build_unique(view, plan, targets, workers)
    return to_prompts(built, output_lengths(spec), spec.chat)


def build_from_table(table: PieceTable, facts: PieceFacts, spec: WorkloadSpec) -> list[Prompt] | None:
    """The set for ``spec`` from a stored piece table, with no tokenizer loaded; None when
    the table's facts do not cover the spec (chat content the template does not fence)."""
    if spec.chat and facts.chat_overhead is None:
        return None
    overhead = (facts.chat_overhead or 0) if spec.chat else 0
    return build_pieces(table, spec, _targets(spec, facts.bos, overhead), facts.bos, overhead)
