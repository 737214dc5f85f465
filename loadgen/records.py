"""The plain values that flow between stages: what to send, and what happened.

Both are dataclasses with slots so that the client's hot path appends to lists on
a preallocated object and nothing else; every figure is derived later, in
:mod:`loadgen.metrics`.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request's input, built before the clock starts.

    Exactly one of ``text`` (completions, SGLang ``/generate``) and ``messages``
    (chat) is set. ``input_len`` is the prompt length *as the server counts it*
    (template and BOS included, unless the workload says otherwise).
    """

    id: int
    input_len: int
    output_len: int
    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    session: Session | None = None  # the first turn of a session carries the session (loadgen.sessions)


class LazyPrompts(Sequence[Prompt]):
    """Prompts made when they are asked for: ``make(i)`` for ``0 <= i < len(self)``.

    The runner takes prompt ``i`` just before its release, so a long set need never be
    in memory at once (a trace replay's prompts; a search probe cycling a built set).
    """

    def make(self, i: int) -> Prompt:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> Prompt: ...
    @overload
    def __getitem__(self, i: slice) -> list[Prompt]: ...

    def __getitem__(self, i: int | slice) -> Prompt | list[Prompt]:
        n = len(self)
        if isinstance(i, slice):
            return [self.make(j) for j in range(*i.indices(n))]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self.make(i)


@dataclass(slots=True)
class RequestRecord:
    """Everything measured about one request. Times are ``perf_counter_ns`` values.

    ``chunk_ns[i]`` is the arrival stamp of the i-th content-bearing chunk (the
    moment its bytes left the socket, before parsing) and ``chunk_tokens[i]`` the
    number of output tokens it carried (from running usage when the server sends
    it, else 1 per chunk, corrected by the final usage in :mod:`loadgen.metrics`).
    """

    prompt_id: int
    input_len: int
    output_len: int
    intended_ns: int = 0
    # the moment the release loop let the request go (0: not stamped): released − intended is
    # the schedule's own lateness; sent_ns comes after the connection and the write
    released_ns: int = 0
    sent_ns: int = 0
    first_ns: int = 0
    last_ns: int = 0
    # Typed arrays, not lists: 8 and 4 bytes per chunk instead of ~40 and 8, which at
    # 1,024 streams of 256 tokens is ~10 MB of the client's memory (numpy reads them
    # without a copy).
    chunk_ns: array = field(default_factory=lambda: array("q"))
    chunk_tokens: array = field(default_factory=lambda: array("i"))
    output_tokens: int = 0
    output_tokens_source: str = ""  # "usage" | "chunks"
    server_prompt_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens served from the prefix cache; None: not reported
    finish_reason: str | None = None
    status: int = 0
    error: str | None = None  # error kind: http_4xx, http_5xx, connect, reset, timeout, malformed, ...
    error_detail: str = ""
    retries: int = 0
    invisible_tokens: int = 0  # output tokens in chunks without visible text (they decode to nothing)
    # Reasoning models (chat): the stamp of the first *answer* chunk (0: none came; set when
    # the request ends), the tokens of reasoning chunks, and those of chunks
    # whose text came under a field the protocol does not know (named once, at the end).
    answer_ns: int = 0
    reasoning_chunk_tokens: int = 0
    unrecognised_tokens: int = 0
    reasoning_tokens_usage: int | None = None  # usage.completion_tokens_details.reasoning_tokens
    unrecognised_field: str | None = None
    text: str = ""  # the answer's text (chat: delta.content), kept with --save-text or for a live history
    reasoning_text: str = ""  # the text of reasoning chunks (and of an unknown field's), kept alike
    warmup: bool = False
    session: int = -1  # session id and turn index of a session's turn (-1: not a session)
    turn: int = -1
    session_end: str = ""  # on a session's last record: completed | failed | context_exceeded
    keep_text: bool = False  # keep the reply's text (a live-history session needs it for the next turn)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def output_text(self) -> str:
        """Everything generated, reasoning first as it streams (vLLM's ``generated_text``)."""
        return self.reasoning_text + self.text if self.reasoning_text else self.text

    @property
    def server_reasoning_tokens(self) -> int | None:
        """The server's reasoning count where it can be believed: SGLang sends 0 when it
        does not count, so a 0 beside reasoning deltas is no count at all."""
        n = self.reasoning_tokens_usage
        if n is None or (n == 0 and (self.reasoning_chunk_tokens or self.unrecognised_tokens)):
            return None
        return n

@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of a session: the user's new message and what the server is asked for.

    ``think_s`` is the pause between the end of the previous reply and this turn's
    release. ``input_len`` is the whole prompt's length as the server counts it when it
    is known before the run (the first turn; every turn with recorded history);
    ``reply`` is the recorded reply, sent as history with ``--history recorded``.
    """

    user: str
    user_len: int
    output_len: int
    think_s: float = 0.0
    input_len: int = 0
    reply: str | None = None


@dataclass(frozen=True, slots=True)
class SessionShape:
    """How a set's prompts grow turn by turn, as the chat template counts them.

    With ``additive`` (the template appends every turn fenced by special tokens), turn
    k's length is turn k-1's plus ``per_turn`` plus the reply's own tokens (after
    ``drops_thinking``: text up to the last ``</think>`` is dropped, as DeepSeek-R1's
    template does) plus the new user tokens. Otherwise each turn is counted in full.
    """

    tokenizer: str
    history: str  # live | recorded
    per_turn: int
    additive: bool
    drops_thinking: bool


@dataclass(frozen=True, slots=True)
class Session:
    """An ordered list of turns; its first turn is the :class:`Prompt` that carries it."""

    id: int
    system: str | None
    turns: tuple[Turn, ...]
    shape: SessionShape
