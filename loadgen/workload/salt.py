"""A per-run salt written into the prompts themselves: cache busting for servers without ``cache_salt``.

vLLM takes a ``cache_salt`` body field; SGLang and older servers do not. For them the
salt goes into the text: a prompt built from pieces (random prompts, trace blocks; see
:mod:`loadgen.workload.pieces`) is ``" p1 p2 p3 …"``, one token per piece, and its first
:data:`SALT_PIECES` pieces are replaced by pieces picked by a keyed hash of the salt and
the original pieces up to that point. So:

* the prompt keeps its exact length (a join of pieces is as many tokens as pieces):
  ``--input-len N`` is still N tokens as the server counts them;
* prompts that began with the same ``j`` pieces still do, and prompts that differed still
  differ (up to a collision of one in the table's size): a run's own sharing (shared
  prefixes, a trace's hash ids) is what it was;
* under another salt the first token differs, and engines key every cached block by the
  blocks before it, so nothing an earlier run left in the cache matches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from loadgen.records import Prompt
from loadgen.workload.errors import WorkloadError

SALT_PIECES = 4


class PieceSalt:
    """``salt(text)``: ``text`` (content made of pieces) with its leading pieces salted."""

    def __init__(self, piece_texts: Sequence[str], salt: str) -> None:
        self.pieces = list(piece_texts)
        self.key = salt.encode()
        self._heads: dict[str, str] = {}  # prompts sharing a head (a shared prefix) hash it once

    def _piece(self, head: str) -> str:
        digest = hashlib.blake2b(head.encode(), key=self.key[:64], digest_size=8).digest()
        return self.pieces[int.from_bytes(digest, "little") % len(self.pieces)]

    def __call__(self, text: str) -> str:
        if not text.startswith(" "):
            raise WorkloadError("--cache-salt-mode prefix salts prompts built from the tokenizer's pieces, and this "
                                "prompt is not one; use --cache-salt-mode body (vLLM) or --reset-prefix-cache")
        parts = text.split(" ", SALT_PIECES + 1)  # ['', p1, .., pS, rest]
        head = " ".join(parts[: SALT_PIECES + 1])
        salted = self._heads.get(head)
        if salted is None:
            salted = "".join(self._piece(" ".join(parts[:i + 1])) for i in range(1, len(parts[: SALT_PIECES + 1])))
            self._heads[head] = salted
        return salted + (" " + parts[SALT_PIECES + 1] if len(parts) > SALT_PIECES + 1 else "")


def salt_prompts(prompts: Sequence[Prompt], salt: PieceSalt) -> list[Prompt]:
    """Every prompt with its leading pieces salted (text, or the chat message's content)."""
    out = []
    for p in prompts:
        if p.messages is not None:
            (msg,) = p.messages
            out.append(replace(p, messages=[{**msg, "content": salt(msg["content"])}]))
        else:
            out.append(replace(p, text=salt(p.text or "")))
    return out
