"""Fitting random token ids to an exact token count, as the server will count them.

Random ids do not survive a round trip: decoding N random ids and encoding the text
again gives a different length almost every time (DeepSeek-R1, N=1024: +10..+44).
So a prompt is made of *text* whose canonical encoding has exactly the wanted length.

Two fitters produce such text:

* ``window`` (the fast one): decode a few more random ids than needed, encode the
  text once, and cut out a run of exactly ``n`` canonical tokens that starts and ends
  on pre-tokenizer piece boundaries. For tokenizers whose pre-tokenizer is a chain of
  regex splits with no look-behind and no normalizer (DeepSeek, GPT-2/4 style,
  Llama 3, Qwen), such a cut encodes back to exactly those tokens: the regex scan
  restarts at every piece boundary, and the only look-ahead in those patterns
  (``\\s+(?!\\S)``) cannot change a cut that ends on a non-space character. One
  encode per prompt instead of two or three, which is what makes 10,000 x 1,024
  tokens fit in the time budget.
* ``classic``: decode, re-encode, cut or top up, repeat (capped). Used for every
  other tokenizer, and as the safety net when a built set fails its full check.

Both return content whose ``encode(text, add_special_tokens=False)`` has exactly
``n`` ids. What the template or BOS adds on top is handled by :class:`TokenizerView`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadgen.errors import LoadgenError
from loadgen.workload.errors import WorkloadError
from loadgen.workload.pieces import PieceTable, is_space, piece_table

MAX_WINDOW_ROUNDS = 12
MAX_CLASSIC_ITERS = 32
# Regex constructs that look behind or anchor; a cut next to them may re-split.
_UNSAFE_REGEX = ("(?<", "\\b", "\\B", "\\A", "\\z", "\\Z", "\\G", "^", "$")
_SAFE_LOOKAHEAD = "(?!\\S)"


class FitError(LoadgenError):
    """One prompt could not be fitted within the iteration cap (caller words the error)."""

    def __init__(self, tokens: int) -> None:
        super().__init__(f"no prompt of {tokens} tokens fitted within the iteration cap")
        self.tokens = tokens

    def __reduce__(self) -> tuple[type[FitError], tuple[int]]:  # the same error out of a worker process
        return FitError, (self.tokens,)


def _strip_char_classes(pattern: str) -> str:
    """Remove ``[...]`` classes so that ``^``/``$`` inside them are not taken for anchors."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            if depth == 0:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "[":
            depth += 1
            # a ']' right after '[' or '[^' is a literal member
            j = i + 1
            if j < len(pattern) and pattern[j] == "^":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            i = j
            continue
        if ch == "]" and depth:
            depth -= 1
            i += 1
            continue
        if depth == 0:
            out.append(ch)
        i += 1
    return "".join(out)


def window_safe(config: dict[str, Any]) -> bool:
    """Whether a ``tokenizer.json`` config lets the window fitter cut without re-encoding.

    Conservative: anything unknown (normalizers, Metaspace, look-behind, anchors)
    sends the tokenizer to the classic fitter.
    """
    norm = config.get("normalizer")
    if norm and not (norm.get("type") == "Sequence" and not norm.get("normalizers")):
        return False
    model = config.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        return False
    pre = config.get("pre_tokenizer")
    if not pre:
        return False
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    for step in steps or []:
        kind = step.get("type")
        if kind == "ByteLevel":
            if step.get("add_prefix_space"):
                return False
        elif kind == "Split":
            pattern = step.get("pattern") or {}
            if "Regex" not in pattern:
                continue  # a literal string split has no context
            if step.get("invert"):
                return False
            bare = _strip_char_classes(pattern["Regex"]).replace(_SAFE_LOOKAHEAD, "")
            if any(tok in bare for tok in _UNSAFE_REGEX) or "(?=" in bare or "(?!" in bare:
                return False
        elif kind not in ("Digits", "Punctuation", "Whitespace", "WhitespaceSplit"):
            return False
    return True


def _pipeline_config(backend: Any) -> dict[str, Any]:
    """The parts of ``tokenizer.json`` that ``window_safe`` reads, without serialising the vocab."""

    def state(component: Any) -> Any:
        return json.loads(component.__getstate__()) if component is not None else None

    model = backend.model
    return {
        "normalizer": state(backend.normalizer),
        "pre_tokenizer": state(backend.pre_tokenizer),
        "model": {"type": type(model).__name__, "dropout": getattr(model, "dropout", None)},
    }


_VIEWS: dict[int, TokenizerView] = {}


def view_of(tokenizer: Any) -> TokenizerView:
    """One view per loaded tokenizer: building it reads the whole vocabulary."""
    view = _VIEWS.get(id(tokenizer))
    if view is None or view.tok is not tokenizer:
        if len(_VIEWS) >= 8:
            _VIEWS.clear()
        view = _VIEWS[id(tokenizer)] = TokenizerView(tokenizer)
    return view


@dataclass
class ChatFrame:
    """How the chat template wraps one user message: ``prefix + content + suffix``.

    ``isolated`` means special tokens fence the content on both sides, so the content
    is tokenized on its own and ``overhead`` tokens are exact for every prompt.
    Otherwise every prompt's templated length is counted in full.
    """

    prefix: str
    suffix: str
    overhead: int
    isolated: bool


class TokenizerView:
    """The tokenizer as the fitters need it: ordinary ids, fast encode/decode, counts.

    Counts mirror the server: a completions prompt is ``encode(text)`` (the BOS the
    post-processor adds, if any, included); a chat prompt is the rendered template
    tokenized without special tokens, which is what ``apply_chat_template(...,
    tokenize=True)`` and vLLM do.
    """

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise WorkloadError(
                f"tokenizer {type(tokenizer).__name__} has no fast backend: "
                "provide a tokenizer.json (a 'fast' tokenizer) in the tokenizer folder"
            )
        self.backend = backend
        config = _pipeline_config(backend)
        added = backend.get_added_tokens_decoder()
        base = backend.get_vocab_size(with_added_tokens=False)
        size = max([base, *[i + 1 for i in added]])
        ordinary = np.zeros(size, dtype=bool)
        ordinary[:base] = True
        ordinary[list(added)] = False
        self.is_ordinary = ordinary
        self.ordinary_ids = np.flatnonzero(ordinary)
        if self.ordinary_ids.size == 0:
            raise WorkloadError("the tokenizer has no ordinary (non-special) tokens to build prompts from")
        self.added_strings = {
            t.content: (bool(t.lstrip), bool(t.rstrip)) for t in added.values()
        }
        self.bos = tokenizer.bos_count
        self.window = window_safe(config)
        self._frame: ChatFrame | None = None
        self._pieces: PieceTable | None = None
        self._pieces_known = False

    # --- primitives ---------------------------------------------------------------
    def decode(self, ids: Any) -> str:
        as_list = ids.tolist() if isinstance(ids, np.ndarray) else ids
        return self.backend.decode(as_list, skip_special_tokens=False)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def sample_ids(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.ordinary_ids[rng.integers(0, self.ordinary_ids.size, size=n)]

    def all_ordinary(self, ids: Any) -> bool:
        arr = np.asarray(ids, dtype=np.int64)
        return bool(arr.size == 0 or (arr.max() < self.is_ordinary.size and self.is_ordinary[arr].all()))

    # --- counts as the server makes them -----------------------------------------
    def count_text(self, text: str) -> int:
        return len(self.backend.encode(text, add_special_tokens=True).ids)

    def render(self, messages: list[dict[str, Any]]) -> str:
        return self.tok.render_chat(messages, add_generation_prompt=True)

    def count_messages(self, messages: list[dict[str, Any]]) -> int:
        return len(self.encode(self.render(messages)))

    @property
    def frame(self) -> ChatFrame:
        if self._frame is None:
            self._frame = self._probe_frame()
        return self._frame

    def _probe_frame(self) -> ChatFrame:
        if not getattr(self.tok, "chat_template", None):
            raise WorkloadError(
                "the tokenizer has no chat template: add 'chat_template' to its tokenizer_config.json, "
                "or benchmark the completions endpoint instead of chat"
            )
        probes = ("loadgen probe Zq7", "x")
        try:
            rendered = [self.render([{"role": "user", "content": p}]) for p in probes]
        except Exception as exc:  # jinja errors come in many types
            raise WorkloadError(f"the tokenizer's chat template failed on a user message: {exc}") from None
        at = rendered[0].find(probes[0])
        prefix, suffix = rendered[0][:at], rendered[0][at + len(probes[0]) :]
        framed = at >= 0 and rendered[1] == prefix + probes[1] + suffix
        if not framed:
            return ChatFrame("", "", self.count_messages([{"role": "user", "content": "x"}]) - 1, False)
        fenced_left = prefix == "" or any(
            prefix.endswith(s) and not rstrip for s, (_l, rstrip) in self.added_strings.items()
        )
        fenced_right = suffix == "" or any(
            suffix.startswith(s) and not lstrip for s, (lstrip, _r) in self.added_strings.items()
        )
        overhead = len(self.encode(prefix)) + len(self.encode(suffix))
        return ChatFrame(prefix, suffix, overhead, fenced_left and fenced_right)

    @property
    def pieces(self) -> PieceTable | None:
        """The piece table (tokens that re-encode to themselves when joined), or None."""
        if not self._pieces_known:
            self._pieces = piece_table(self, getattr(self.tok, "fingerprint", None)) if self.window else None
            self._pieces_known = True
        return self._pieces

    def frames_pieces(self, sample: str) -> bool:
        """Whether chat content shaped like ``sample`` is counted as the frame's overhead
        plus its own tokens (special tokens fence it and the template keeps it intact)."""
        frame = self.frame
        return frame.isolated and self.render([{"role": "user", "content": sample}]) == frame.prefix + sample + frame.suffix

    # --- fitters --------------------------------------------------------------------
    def fit(self, n: int, rng: np.random.Generator) -> tuple[str, list[int]]:
        """Text whose canonical encoding (no special tokens) is exactly ``n`` ordinary ids."""
        if n < 1:
            raise FitError(n)
        if self.window:
            try:
                return self.fit_window(n, rng)
            except FitError:
                pass
        return self.fit_classic(n, rng)

    def fit_window(self, n: int, rng: np.random.Generator) -> tuple[str, list[int]]:
        """One encode, then a cut of exactly ``n`` tokens between piece boundaries."""
        # Re-encoding random ids grows the count (by +10..+44 tokens at n=1024), so a
        # few spare ids leave a margin to cut from without a second encode.
        m = n + 2 + n // 128
        for _ in range(MAX_WINDOW_ROUNDS):
            text = self.decode(self.sample_ids(rng, m))
            enc = self.backend.encode(text, add_special_tokens=False)
            ids = enc.ids
            total = len(ids)
            if total >= n:
                found = self._cut(text, ids, enc.word_ids, n)
                if found is not None:
                    return found
            m += 2 + max(0, n - total) + n // 16
        raise FitError(n)

    def _cut(self, text: str, ids: list[int], words: list[int | None], n: int) -> tuple[str, list[int]] | None:
        total = len(ids)
        arr = np.asarray(ids, dtype=np.int64)
        w = np.asarray([-1 if x is None else x for x in words], dtype=np.int64)
        boundary = np.ones(total + 1, dtype=bool)
        boundary[1:total] = w[1:] != w[:-1]
        # a special token (word id None) is its own piece
        none_at = w < 0
        boundary[:total] |= none_at
        boundary[1 : total + 1] |= none_at
        bad = ~self.is_ordinary[np.minimum(arr, self.is_ordinary.size - 1)] | (arr >= self.is_ordinary.size)
        bad_prefix = np.concatenate(([0], np.cumsum(bad)))
        starts = np.flatnonzero(boundary[: total - n + 1])
        ends = starts + n
        good = boundary[ends] & (bad_prefix[ends] - bad_prefix[starts] == 0)
        for s in starts[good][:8]:
            s = int(s)
            e = s + n
            head = self.decode(ids[:s]) if s else ""
            tail = self.decode(ids[e:]) if e < total else ""
            if not (text.startswith(head) and text.endswith(tail)):
                continue
            piece = text[len(head) : len(text) - len(tail)]
            if piece and not is_space(piece[-1]):
                return piece, ids[s:e]
        return None

    def fit_classic(self, n: int, rng: np.random.Generator) -> tuple[str, list[int]]:
        """Decode, re-encode, cut or top up until the canonical length is ``n``."""
        ids = self.sample_ids(rng, n).tolist()
        for it in range(MAX_CLASSIC_ITERS):
            text = self.decode(ids)
            canon = self.encode(text)
            if len(canon) == n and self.all_ordinary(canon) and text:
                return text, canon
            canon = [i if i < self.is_ordinary.size and self.is_ordinary[i] else int(self.sample_ids(rng, 1)[0]) for i in canon]
            if len(canon) > n:
                ids = canon[:n]
            else:
                ids = canon + self.sample_ids(rng, n - len(canon)).tolist()
            if it >= 8:  # break a cycle between two texts
                ids[-1] = int(self.sample_ids(rng, 1)[0])
        raise FitError(n)
