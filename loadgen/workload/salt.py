"""A per-run salt written into the prompts themselves: cache busting for servers without ``cache_salt``.

vLLM takes a ``cache_salt`` body field; SGLang and older servers do not. For them the
salt goes into the text: a prompt built from pieces (random prompts, trace blocks; see
:mod:`loadgen.workload.pieces`) is ``" p1 p2 p3 …"``, one token per piece, and its first
:data:`SALT_PIECES` pieces are each mapped through a permutation of the piece table drawn
from the salt (one per position). So:

* the prompt keeps its exact length (a join of pieces is as many tokens as pieces):
  ``--input-len N`` is still N tokens as the server counts it;
* a permutation is one-to-one, so prompts that began with the same ``j`` pieces still do
  and prompts that differed still differ: a run's own sharing (shared prefixes, a trace's
  hash ids) is what it was;
* under another salt the first piece maps elsewhere (but for one chance in the table's
  size), and engines key every cached block by the blocks before it, so nothing an earlier
  run left in the cache matches.

The permutations come from the salt alone, so every worker process salts alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from loadgen.records import Prompt
from loadgen.workload.errors import WorkloadError

SALT_PIECES = 4


class PieceSalt:
    """``salt(text)``: ``text`` (content made of pieces) with its leading pieces salted."""

    def __init__(self, piece_texts: Sequence[str], salt: str) -> None:
        self.pieces = list(piece_texts)
        self.index = {t[1:]: i for i, t in enumerate(self.pieces)}  # a piece's text after its space
        seed = int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=16).digest(), "little")
        rng = np.random.default_rng(seed)
        self.perms = [rng.permutation(len(self.pieces)).tolist() for _ in range(SALT_PIECES)]

    def __call__(self, text: str) -> str:
        parts = text.split(" ", SALT_PIECES + 1)  # ['', p1, .., pS, rest]
        if parts[0]:
            raise _not_pieces()
        head = []
        for perm, piece in zip(self.perms, parts[1:SALT_PIECES + 1], strict=False):
            i = self.index.get(piece)
            if i is None:
                raise _not_pieces()
            head.append(self.pieces[perm[i]])
        return "".join(head) + (" " + parts[SALT_PIECES + 1] if len(parts) > SALT_PIECES + 1 else "")


def _not_pieces() -> WorkloadError:
    return WorkloadError("--cache-salt-mode prefix salts prompts built from the tokenizer's pieces, and this prompt "
                         "is not one; use --cache-salt-mode body (vLLM) or --reset-prefix-cache")


def salt_prompts(prompts: Sequence[Prompt], salt: PieceSalt) -> list[Prompt]:
    """Every prompt with its leading pieces salted (text, or the chat message's content)."""
    out = []
    for p in prompts:
        if p.messages is not None:
            (msg,) = p.messages
            out.append(Prompt(p.id, p.input_len, p.output_len, messages=[{**msg, "content": salt(msg["content"])}]))
        else:
            out.append(Prompt(p.id, p.input_len, p.output_len, text=salt(p.text or "")))
    return out
