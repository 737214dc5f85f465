"""Prompts for a trace replay: exact lengths, shared prefixes where the trace shares hash ids.

A prompt is the server's token stream cut into blocks of ``block_size`` tokens, one per
hash id (Mooncake), as the engine's prefix cache cuts it: block 0 starts with what the
server puts before the content (BOS, or the chat template's head), the last block ends
with what it puts after (the template's tail). The content tokens of a block are
determined by its id alone, so two requests that share a leading run of ``k`` hash ids
share exactly their first ``k * block_size`` tokens: the first two tokens of a block's
content are a one-to-one function of its id (ids below 42,351² differ there for the
DeepSeek-R1 table), the rest hashed from ``(seed, id, position)``. Traces without hash
ids (Azure, BurstGPT) get fresh ids for every block: no two prompts share a block.

Content is made of *pieces* (``loadgen.workload.pieces``): tokens that encode back to
themselves when joined, so a prompt of ``n`` pieces is ``n`` tokens, counted without an
encode; the set is still re-counted on a sample with the tokenizer after building.

Memory: a 12,000-request trace of ~12,000 tokens a prompt is ~1 GB of text, so nothing
is built up front. :class:`TracePrompts` is a sequence whose items are built when the
runner asks for them, which it does just before each release; a block's text is
built once and kept in a bounded cache (shared blocks are joined, not rebuilt).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from loadgen.records import Prompt
from loadgen.workload.errors import WorkloadError
from loadgen.workload.pieces import PieceTable
from loadgen.workload.replay import ReplayOptions, Selection, select
from loadgen.workload.traces import Trace

BLOCK_CACHE = 16_384  # block texts kept (~3.5 KB each at 512 tokens: ~60 MB at most)
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array (wrapping arithmetic): a cheap, good hash."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9) & _MASK
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB) & _MASK
        return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class Frame:
    """What the server adds around the content: ``head`` tokens before (BOS, template head), ``tail`` after."""

    head: int
    tail: int

    @property
    def min_input(self) -> int:
        return self.head + self.tail + 1


class BlockText:
    """A block's content text from its id: the same id, the same pieces, everywhere."""

    def __init__(self, table: PieceTable, block_size: int, seed: int) -> None:
        self.table = table
        self.block_size = block_size
        n = table.size
        rng = np.random.default_rng([seed, 0x7A3CE])
        self.first = rng.permutation(n)  # content piece 0 of block b: first[b % n]
        self.second = rng.permutation(n)  # content piece 1: second[(b // n) % n]
        self.salt = np.uint64(int(rng.integers(0, 2**63)))
        self.text = functools.lru_cache(maxsize=BLOCK_CACHE)(self._text)

    def index(self, block_id: int, count: int) -> np.ndarray:
        """Table positions of the block's first ``count`` content pieces."""
        n = self.table.size
        pos = np.arange(count, dtype=np.uint64)
        key = (np.uint64(block_id) << np.uint64(20)) + pos + self.salt
        idx = (_mix(key) % np.uint64(n)).astype(np.int64)
        if count > 0:
            idx[0] = self.first[block_id % n]
        if count > 1:
            idx[1] = self.second[(block_id // n) % n]
        return idx

    def _text(self, block_id: int, count: int) -> str:
        return self.table.join(self.index(block_id, count))


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


class TracePrompts(Sequence[Prompt]):
    """The prompts of a replay, each built when it is asked for (just before its release)."""

    def __init__(self, blocks: BlockText, frame: Frame, ids: list[np.ndarray], selection: Selection,
                 chat: bool) -> None:
        self.blocks = blocks
        self.frame = frame
        self.ids = ids
        self.rows = selection.rows.tolist()
        self.input_lens = selection.input_lens.tolist()
        self.output_lens = selection.output_lens.tolist()
        self.chat = chat

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> Prompt: ...
    @overload
    def __getitem__(self, i: slice) -> list[Prompt]: ...

    def __getitem__(self, i: int | slice) -> Prompt | list[Prompt]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n_in = self.input_lens[i]
        text = self.content(i)
        if self.chat:
            return Prompt(self.rows[i], n_in, self.output_lens[i], messages=[{"role": "user", "content": text}])
        return Prompt(self.rows[i], n_in, self.output_lens[i], text=text)

    def content(self, i: int) -> str:
        """Prompt ``i``'s content: its blocks' texts joined."""
        ids = self.ids[i]
        size = self.blocks.block_size
        counts = block_counts(self.input_lens[i], -(-self.input_lens[i] // size), self.frame, size)
        text = self.blocks.text
        return "".join([text(int(b), c) for b, c in zip(ids.tolist(), counts, strict=False) if c])


@dataclass
class TraceSet:
    """A replay ready to send: lazy prompts, their release offsets, and what was counted on the way."""

    prompts: TracePrompts
    release_s: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

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


def row_ids(trace: Trace, rows: np.ndarray, block_size: int) -> list[np.ndarray]:
    """Each row's block ids: the trace's hash ids, or fresh ones for traces without them."""
    if trace.hash_ids is not None:
        return [trace.ids_of(int(r)) for r in rows]
    blocks = -(-trace.input_lens[rows] // block_size)
    ends = np.cumsum(blocks)
    return [np.arange(e - b, e, dtype=np.int64) for b, e in zip(blocks.tolist(), ends.tolist(), strict=True)]


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
    prompts = TracePrompts(BlockText(table, block_size, seed), frame, row_ids(trace, selection.rows, block_size),
                           selection, chat)
    info = {
        "file": trace.path, "format": trace.format, "rows": len(trace), "block_size": block_size,
        "timing": replay.timing, "speedup": replay.speedup, "start_s": replay.start_s, "end_s": replay.end_s,
        "max_gap_s": replay.max_gap_s, "requests": len(prompts), "rows_considered": selection.in_window,
        "skipped_failed": trace.skipped_failed, "skipped_too_long": selection.skipped_too_long,
        "skipped_too_short": selection.skipped_too_short, "shortened": selection.shortened,
        "too_long": replay.too_long, "max_model_len": max_model_len, "span_s": selection.span_s,
    }
    return TraceSet(prompts, selection.release_s, info)

