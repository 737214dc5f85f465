"""Prompts for a trace replay: exact lengths, shared prefixes where the trace shares hash ids.

A prompt is the server's token stream cut into blocks of ``block_size`` tokens, one per
hash id (Mooncake), as the engine's prefix cache cuts it: block 0 starts with what the
server puts before the content (BOS, or the chat template's head), the last block ends
with what it puts after (the template's tail). The content tokens of a block are
determined by its id alone, so two requests that share a leading run of ``k`` hash ids
share exactly their first ``k * block_size`` tokens: the first two tokens of a block's
content are a one-to-one function of its id (ids below 42,351² differ there for the
DeepSeek-R1 table), the rest a run of random pieces chosen by a hash of ``(seed, id)``. Traces without hash
ids (Azure, BurstGPT) get fresh ids for every block: no two prompts share a block.

Content is made of *pieces* (``loadgen.workload.pieces``): tokens that encode back to
themselves when joined, so a prompt of ``n`` pieces is ``n`` tokens, counted without an
encode; the set is still re-counted on a sample with the tokenizer after building.

Memory: a 12,000-request trace of ~12,000 tokens a prompt is ~1 GB of text, so nothing
is built up front. :class:`TracePrompts` is a sequence whose items are built when the
runner asks for them, which it does just before each release. What is built once is
the pool of random pieces every block is a slice of (:class:`BlockText`).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadgen.records import LazyPrompts, Prompt
from loadgen.workload.errors import WorkloadError
from loadgen.workload.pieces import PieceTable
from loadgen.workload.replay import ReplayOptions, select
from loadgen.workload.traces import Trace

POOL_PIECES = 1 << 20  # random pieces joined once; a block's content is a slice of them (~7 MB)
_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread hash of an integer."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


@dataclass(frozen=True)
class Frame:
    """What the server adds around the content: ``head`` tokens before (BOS, template head), ``tail`` after."""

    head: int
    tail: int

    @property
    def min_input(self) -> int:
        return self.head + self.tail + 1


class BlockText:
    """A block's content text from its id: the same id, the same pieces, everywhere.

    Pieces 0 and 1 of block ``b`` are ``first[b % n]`` and ``second[(b // n) % n]`` (so
    two ids below n² differ there); the rest is a run of a pool of random pieces joined
    once, starting where the id hashes to. A block is then two lookups and a slice: a
    prompt of 24 blocks is built in microseconds, just before its release, and nothing
    per block is kept.
    """

    def __init__(self, table: PieceTable, block_size: int, seed: int) -> None:
        self.table = table
        self.block_size = block_size
        n = table.size
        rng = np.random.default_rng([seed, 0x7A3CE])
        texts = table.texts
        self.first = texts[rng.permutation(n)].tolist()
        self.second = texts[rng.permutation(n)].tolist()
        pool = rng.integers(0, n, size=max(POOL_PIECES, 4 * block_size))
        self.pool = table.join(pool)
        # char offset of each piece: a typed array (8 MB), not a list of a million ints (36 MB)
        self.ends = array("q", np.concatenate(([0], np.cumsum(table.lengths[pool]))).astype(np.int64).tobytes())
        self.starts = len(pool) - block_size  # a run of block_size - 2 pieces fits from any start below this
        self.salt = seed * 0x9E3779B97F4A7C15

    def text(self, block_id: int, count: int) -> str:
        """The block's first ``count`` content pieces."""
        n = len(self.first)
        head = self.first[block_id % n]
        if count <= 1:
            return head if count == 1 else ""
        at = _mix(block_id + self.salt) % self.starts
        return head + self.second[(block_id // n) % n] + self.pool[self.ends[at]:self.ends[at + count - 2]]


def block_counts(input_len: int, n_blocks: int, frame: Frame, block_size: int) -> list[int]:
    """Content pieces in each block: block 0 gives ``frame.head`` places to BOS/the template."""
    left = input_len - frame.head - frame.tail
    counts = []
    room = block_size - frame.head
    for _ in range(n_blocks):
        take = max(0, min(room, left))
        counts.append(take)
        left -= take
        room = block_size
    return counts


@dataclass(eq=False)
class TracePrompts(LazyPrompts):
    """The prompts of a replay, each built when it is asked for (just before its release).

    ``rows`` are the trace rows sent (prompt ids). Prompt ``i``'s block ids are
    ``hash_ids[id_from[i]:id_to[i]]``, or with no ``hash_ids`` (Azure, BurstGPT) the
    integers ``id_from[i] .. id_to[i] - 1`` themselves: two numbers a request, however
    many rows a trace has.
    """

    blocks: BlockText
    frame: Frame
    hash_ids: np.ndarray | None
    id_from: np.ndarray
    id_to: np.ndarray
    rows: np.ndarray
    input_lens: np.ndarray
    output_lens: np.ndarray
    chat: bool
    salt: Callable[[str], str] | None = None  # --cache-salt-mode prefix (loadgen.workload.salt.PieceSalt)

    def subset(self, indices: Sequence[int]) -> TracePrompts:
        """The prompts at ``indices``, still built on demand (one worker's share of a replay)."""
        pick = np.asarray(indices, dtype=np.int64)
        return TracePrompts(self.blocks, self.frame, self.hash_ids, self.id_from[pick], self.id_to[pick],
                            self.rows[pick], self.input_lens[pick], self.output_lens[pick], self.chat, self.salt)

    def __len__(self) -> int:
        return len(self.rows)

    def make(self, i: int) -> Prompt:
        row, n_in, n_out = int(self.rows[i]), int(self.input_lens[i]), int(self.output_lens[i])
        text = self.content(i, n_in)
        if self.chat:
            return Prompt(row, n_in, n_out, messages=[{"role": "user", "content": text}])
        return Prompt(row, n_in, n_out, text=text)

    def block_ids(self, i: int) -> list[int]:
        a, b = int(self.id_from[i]), int(self.id_to[i])
        return list(range(a, b)) if self.hash_ids is None else self.hash_ids[a:b].tolist()

    def content(self, i: int, n_in: int) -> str:
        """Prompt ``i``'s content: its blocks' texts joined (a shortened prompt uses its leading blocks)."""
        size = self.blocks.block_size
        counts = block_counts(n_in, -(-n_in // size), self.frame, size)
        text = self.blocks.text
        joined = "".join([text(b, c) for b, c in zip(self.block_ids(i), counts, strict=False) if c])
        return joined if self.salt is None else self.salt(joined)


class Lengths(LazyPrompts):
    """A replay's prompts as lengths only (id = position): a sample is chosen without building texts."""

    def __init__(self, prompts: TracePrompts) -> None:
        self.lens = prompts.input_lens

    def __len__(self) -> int:
        return len(self.lens)

    def make(self, i: int) -> Prompt:
        return Prompt(i, int(self.lens[i]), 0)


@dataclass
class TraceSet:
    """A replay ready to send: lazy prompts, their release offsets, and what was counted on the way."""

    prompts: TracePrompts
    release_s: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    # each sent request's time in the trace (s from the trace's first row), in ``prompts.rows``' order:
    # the axis of the per-window figures, whatever the speed-up, gap cap or timing did to the release
    times_s: np.ndarray | None = None

    def result_section(self, lag_p50_ms: float | None, lag_p99_ms: float | None, lag_max_ms: float | None,
                       behind_p99_ms: float) -> dict[str, Any]:
        """The result's ``trace`` key: the replay, and how late requests went out against the trace."""
        out = dict(self.info)
        if self.info.get("timing") == "trace":
            out["lag_ms"] = {"p50": lag_p50_ms, "p99": lag_p99_ms, "max": lag_max_ms}
            out["behind"] = lag_p99_ms is not None and lag_p99_ms > behind_p99_ms
        return out


def frame_of(view: Any, chat: bool) -> Frame:
    """What the server adds around content made of pieces, measured on the tokenizer."""
    if not chat:
        return Frame(view.bos, 0)
    table = view.pieces
    if table is None or not view.frames_pieces(table.head()):
        raise WorkloadError("trace replay over chat needs a chat template that fences the user message with special "
                            "tokens (as DeepSeek's and Llama 3's do); benchmark the completions endpoint instead")
    head = len(view.encode(view.frame.prefix))
    return Frame(head, view.frame.overhead - head)


def id_ranges(trace: Trace, rows: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's block ids as ``[from, to)``: into the trace's hash ids, or fresh ids for traces without them."""
    if trace.id_starts is not None:
        return trace.id_starts[rows], trace.id_starts[rows + 1]
    ends = np.cumsum(-(-trace.input_lens[rows] // block_size))
    return ends - -(-trace.input_lens[rows] // block_size), ends


def build_replay(view: Any, trace: Trace, replay: ReplayOptions, *, chat: bool, block_size: int, seed: int,
                max_model_len: int | None) -> TraceSet:
    """The replay of ``trace`` (prompts built lazily) for the tokenizer behind ``view``."""
    table = view.pieces
    if table is None:
        raise WorkloadError("trace replay builds prompts from the tokenizer's piece table, and this tokenizer has "
                            "none (its pre-tokenizer is not a plain regex split); use a BPE tokenizer folder such as "
                            "DeepSeek's, Llama 3's or Qwen's")
    frame = frame_of(view, chat)
    if frame.head + frame.tail >= block_size:
        raise WorkloadError(f"--block-size {block_size} cannot hold the {frame.head + frame.tail} tokens the "
                            "server adds to every prompt; use a larger --block-size")
    selection = select(trace, replay, min_input=frame.min_input, max_model_len=max_model_len)
    id_from, id_to = id_ranges(trace, selection.rows, block_size)
    prompts = TracePrompts(BlockText(table, block_size, seed), frame, trace.hash_ids, id_from, id_to,
                           selection.rows, selection.input_lens, selection.output_lens, chat)
    info = {
        "file": trace.path, "format": trace.format, "rows": len(trace), "block_size": block_size,
        "timing": replay.timing, "speedup": replay.speedup, "start_s": replay.start_s, "end_s": replay.end_s,
        "max_gap_s": replay.max_gap_s, "requests": len(prompts), "rows_considered": selection.in_window,
        "skipped_failed": trace.skipped_failed, "skipped_too_long": selection.skipped_too_long,
        "skipped_too_short": selection.skipped_too_short, "shortened": selection.shortened,
        "too_long": replay.too_long, "max_model_len": max_model_len, "span_s": selection.span_s,
    }
    return TraceSet(prompts, selection.release_s, info, times_s=trace.times_s[selection.rows])

