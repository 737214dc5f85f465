"""Prompt counting and output text for the sim, with the real tokenizer.

vLLM counts a prompt with the Hugging Face tokenizer and renders chat prompts with
the model's Jinja chat template. The sim uses loadgen's lean tokenizer
(``loadgen.workload.tokenizer``: the ``tokenizers`` library plus transformers'
template rules, without importing transformers), so a sim starts in a fraction of
a second and counts exactly as transformers does (the tests check it).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from loadgen.workload.chat_template import ChatTemplateError
from loadgen.workload.tokenizer import load_tokenizer

__all__ = ["ChatTemplateError", "SimTokenizer"]

PIECE_TABLE_SIZE = 4096


class SimTokenizer:
    """Counts prompts exactly as the real server would and supplies output pieces."""

    def __init__(self, name_or_path: str) -> None:
        self.name = name_or_path
        self._tok = load_tokenizer(name_or_path)
        self.path = self._tok.path
        self.vocab_size = len(self._tok)  # every id the tokenizer knows, added tokens included
        self.pieces = self._piece_table()

    @property
    def has_chat_template(self) -> bool:
        return self._tok.chat_template is not None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text the server would feed the model for these messages."""
        return self._tok.render_chat(messages, add_generation_prompt=add_generation_prompt)

    def chat_ids(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        # transformers tokenizes a rendered template without adding special tokens:
        # the template already wrote them.
        return self._tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def _piece_table(self) -> list[str]:
        """A few thousand ordinary word tokens (" the", " cat") whose concatenation
        re-tokenizes to the same ids, so output text and completion_tokens agree."""
        ids = _spread(3, min(self.vocab_size, 128000), random.Random(1234))
        pieces: list[str] = []
        for tid in ids:
            text = self.decode([tid])
            if len(text) < 3 or text[0] != " " or not text[1:].isascii() or not text[1:].isalpha():
                continue
            if self.encode(text, add_special_tokens=False) != [tid]:
                continue
            pieces.append(text)
            if len(pieces) >= PIECE_TABLE_SIZE:
                break
        if not pieces:  # an odd vocabulary: fall back to any decodable token
            pieces = [self.decode([t]) for t in range(3, min(self.vocab_size, 3 + PIECE_TABLE_SIZE))]
        return pieces


def _spread(low: int, high: int, rng: random.Random) -> Iterator[int]:
    """Every id in [low, high) once, in an order spread over the whole range: a random start
    and a random step coprime to the range's size. Taken lazily, so a sim start reads a few
    thousand ids instead of shuffling a 128k-entry list (0.1 s of every start)."""
    n = high - low
    if n <= 0:
        return
    step = rng.randrange(1, n) if n > 1 else 1
    while math.gcd(step, n) != 1:
        step += 1
    start = rng.randrange(n)
    for i in range(n):
        yield low + (start + i * step) % n
