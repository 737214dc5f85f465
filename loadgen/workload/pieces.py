"""Tokens that re-encode to themselves when joined: exact random prompts without encoding.

Decoding random ids and encoding the text again changes the count, so the other
fitters encode every prompt at least once, and that encode is most of the build time.
This table avoids it. A *piece* is an ordinary token whose text is one space followed
by ASCII characters that are not whitespace (``" the"``, ``" Paris"``, ``" (("``) and
that encodes, on its own, to exactly that token. ASCII because a prompt string then
takes one byte per character (a million prompts in memory) and JSON-encodes fastest;
the content of random prompts means nothing to an engine. Text made only of pieces encodes back to
exactly the pieces' ids, so a prompt of ``n`` random pieces has ``n`` tokens by
construction.

Why, for the tokenizers the table is built for (no normalizer, BPE, pre-tokenizer a
chain of regex splits without look-behind or anchors, byte-level without an added
prefix space; ``fit.window_safe``): every piece starts with the only space between it
and the previous piece, and no alternative of such regexes (letters, punctuation or
digit runs, ``\\s+(?!\\S)``) matches a non-space character followed by a space, so a
regex scan stops at the end of each piece and restarts at the next space exactly as it
did on the piece alone; BPE never merges across pre-tokenizer pieces; and an added
(special) token cannot appear across pieces unless its own text has a space in it.

The argument is checked rather than trusted: building the table encodes long random
joins and drops any token that breaks one (``CHECK_ROUNDS`` rounds of
``CHECK_TOKENS``), and every built prompt set is re-counted on a sample (see
``build_prompts``). The table is cached on disk by the tokenizer's file hash, with
the piece texts and the counts a build adds on top (:class:`PieceFacts`), so a later
build needs no tokenizer at all: loading one is most of a cold start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from loadgen.workload.tokenizer import cache_dir


class _Frame(Protocol):
    overhead: int


class TokenizerView(Protocol):
    """What the table needs of :class:`loadgen.workload.fit.TokenizerView`, which builds on this module."""

    backend: Any
    ordinary_ids: np.ndarray
    bos: int

    def encode(self, text: str) -> list[int]: ...

    def frames_pieces(self, sample: str) -> bool: ...

    @property
    def frame(self) -> _Frame: ...

TABLE_VERSION = 3  # 3: texts and facts stored (a build from the cache loads no tokenizer)
MIN_PIECES = 256  # fewer than this and prompts would repeat too much: use the fitters
CHECK_ROUNDS = 4
CHECK_TOKENS = 16_384
MAX_REPAIRS = 64
# Characters Python does not call whitespace but some regex engines treat as \s.
_EXTRA_SPACE = frozenset({"\u200b", "\u180e", "\ufeff", "\u2060"})


@dataclass(frozen=True)
class PieceTable:
    """Piece ids and their texts, index-aligned."""

    ids: np.ndarray  # int64
    texts: np.ndarray  # object (str)
    lengths: np.ndarray  # int64, len() of each text

    @classmethod
    def of(cls, ids: list[int], texts: list[str]) -> PieceTable:
        return cls(
            np.asarray(ids, dtype=np.int64),
            np.asarray(texts, dtype=object),
            np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)),
        )

    @property
    def size(self) -> int:
        return int(self.ids.size)

    def join(self, index: np.ndarray) -> str:
        """The text of the pieces at table positions ``index``."""
        return "".join(self.texts[index].tolist())

    def head(self) -> str:
        """The first few pieces joined: what a chat template is probed with."""
        return self.join(np.arange(min(8, self.size)))


@dataclass(frozen=True)
class PieceFacts:
    """What a server adds to a prompt's content, as this tokenizer counts it.

    ``bos``: tokens the post-processor adds to a completions prompt. ``chat_overhead``:
    tokens the chat template adds around one user message, or None when piece-shaped
    content is not counted as overhead plus its own tokens (no template, or one that
    does not fence the message with special tokens).
    """

    bos: int
    chat_overhead: int | None


def is_space(ch: str) -> bool:
    return ch.isspace() or ch in _EXTRA_SPACE


# The ASCII characters str.isspace() accepts (_EXTRA_SPACE holds none): one regex search per token
# instead of a Python call per character, over a 128k vocabulary at every cold build.
_ASCII_SPACE = re.compile("[\t\n\x0b\x0c\r\x1c-\x1f ]")


def _is_piece_text(text: str) -> bool:
    if len(text) < 2 or text[0] != " " or not text.isascii():
        return False
    return _ASCII_SPACE.search(text, 1) is None


def candidates(view: TokenizerView) -> tuple[list[int], list[str]]:
    """Ordinary tokens shaped like a piece that encode to themselves alone."""
    backend = view.backend
    ordinary = view.ordinary_ids.tolist()
    texts = backend.decode_batch([[i] for i in ordinary], skip_special_tokens=False)
    shaped = [(i, t) for i, t in zip(ordinary, texts, strict=True) if _is_piece_text(t)]
    if not shaped:
        return [], []
    encoded = backend.encode_batch([t for _, t in shaped], add_special_tokens=False)
    kept = [(i, t) for (i, t), e in zip(shaped, encoded, strict=True) if e.ids == [i]]
    return [i for i, _ in kept], [t for _, t in kept]


def _first_break(view: TokenizerView, table: PieceTable, index: np.ndarray) -> int | None:
    """Position of the first piece whose join does not encode back to itself, or None."""
    want = table.ids[index].tolist()
    got = view.encode(table.join(index))
    if got == want:
        return None
    return next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))


def verified(view: TokenizerView, ids: list[int], texts: list[str]) -> PieceTable | None:
    """The candidates minus any token seen breaking a random join; None if too few remain."""
    table = PieceTable.of(ids, texts)
    rng = np.random.default_rng(0)
    repairs = 0
    rounds = 0
    while rounds < CHECK_ROUNDS:
        if table.size < MIN_PIECES:
            return None
        index = rng.integers(0, table.size, size=CHECK_TOKENS)
        k = _first_break(view, table, index)
        if k is None:
            rounds += 1
            continue
        repairs += 1
        if repairs > MAX_REPAIRS:
            return None
        # drop the pieces on both sides of the break; the join is retried from scratch
        drop = set(table.ids[index[max(0, k - 1) : k + 1]].tolist())
        keep = [j for j, i in enumerate(table.ids.tolist()) if i not in drop]
        table = PieceTable(table.ids[keep], table.texts[keep], table.lengths[keep])
        rounds = 0
    return table


def _table_file(fingerprint: str) -> Path:
    return cache_dir() / "tokenizers" / f"pieces-{fingerprint}-v{TABLE_VERSION}.json"


def facts_of(view: TokenizerView, table: PieceTable | None) -> PieceFacts:
    """The view's counts for content made of ``table``'s pieces."""
    overhead = None
    if table is not None:
        try:
            if view.frames_pieces(table.head()):
                overhead = view.frame.overhead
        except Exception:  # no chat template, or one that fails: chat prompts take the general path
            overhead = None
    return PieceFacts(view.bos, overhead)


def _read(path: Path) -> tuple[PieceTable | None, PieceFacts] | None:
    """A stored table and its facts, or None when the file is missing or unreadable."""
    try:
        data = orjson.loads(path.read_bytes())
        ids, texts, facts = data["ids"], data["texts"], data["facts"]
        if len(ids) != len(texts):
            return None
        return (PieceTable.of(ids, texts) if ids else None), PieceFacts(int(facts["bos"]), facts["chat_overhead"])
    except (OSError, KeyError, TypeError, ValueError, orjson.JSONDecodeError):
        return None


def cached(fingerprint: str) -> tuple[PieceTable, PieceFacts] | None:
    """The stored table and facts of the tokenizer with this fingerprint, without loading
    the tokenizer; None when there is none (yet) or the tokenizer has no table."""
    found = _read(_table_file(fingerprint))
    if found is None or found[0] is None:
        return None
    return found[0], found[1]


def forget(fingerprint: str) -> None:
    """Drop the stored table (a built set disagreed with the tokenizer): the next build
    makes and verifies it again."""
    _table_file(fingerprint).unlink(missing_ok=True)


def piece_table(view: TokenizerView, fingerprint: str | None) -> PieceTable | None:
    """The verified piece table for this tokenizer (cached on disk), or None."""
    path = _table_file(fingerprint) if fingerprint else None
    if path is not None:
        found = _read(path)
        if found is not None:
            return found[0]
    ids, texts = candidates(view)
    table = verified(view, ids, texts) if len(ids) >= MIN_PIECES else None
    if fingerprint:
        store(fingerprint, table, facts_of(view, table))
    return table


def store(fingerprint: str, table: PieceTable | None, facts: PieceFacts) -> None:
    """Keep the table (None: this tokenizer has none) for the tokenizer with this
    fingerprint. Written atomically; a cache that cannot be written is not an error."""
    import os

    path = _table_file(fingerprint)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    body = {
        "version": TABLE_VERSION,
        "ids": [] if table is None else table.ids.tolist(),
        "texts": [] if table is None else table.texts.tolist(),
        "facts": {"bos": facts.bos, "chat_overhead": facts.chat_overhead},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(orjson.dumps(body))
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
