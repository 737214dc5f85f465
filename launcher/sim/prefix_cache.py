"""The sim's prefix cache: block-granular, LRU, as large as the profile's KV cache.

It follows vLLM's automatic prefix caching closely enough for a benchmark to see what
a real server shows: a prompt is cut into full blocks (``block_size`` tokens); each
block is keyed by its tokens and the key of the block before it (a chain, so a block
matches only after the same prefix), the first key seeded with the request's
``cache_salt``; a request's hit is its longest run of leading blocks already cached,
capped so that at least one prompt token is computed (vLLM recomputes the last token
of a fully cached prompt). Every block of the prompt is then cached, as vLLM caches
the blocks of a request it schedules. Eviction is least recently used, and a prompt's
blocks are touched from its tail to its head, so a shared prefix is the last thing to
go and a chain never loses its head before its tail.

The counters are vLLM's: ``queries`` counts prompt tokens looked up, ``hits`` those
served from the cache. Reset empties the cache and keeps the counters (they are
Prometheus counters).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

DEFAULT_BLOCK_SIZE = 16  # vLLM's default --block-size


class PrefixCache:
    """``lookup(ids, salt)`` → cached tokens of that prompt, and the prompt is then cached."""

    def __init__(self, capacity_tokens: int, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if block_size < 1:
            raise ValueError(f"block size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.capacity_blocks = max(1, capacity_tokens // block_size)
        self.blocks: OrderedDict[int, None] = OrderedDict()
        self.queries = 0
        self.hits = 0
        self.resets = 0

    def block_keys(self, ids: Sequence[int], salt: str | None = None) -> list[int]:
        """The chained key of every full block of ``ids``."""
        bs = self.block_size
        key = hash(("salt", salt)) if salt else 0
        keys = []
        for start in range(0, len(ids) - bs + 1, bs):
            key = hash((key, tuple(ids[start : start + bs])))
            keys.append(key)
        return keys

    def lookup(self, ids: Sequence[int], salt: str | None = None) -> int:
        """Prompt tokens of ``ids`` found in the cache (a multiple of the block size); then
        every full block of ``ids`` is cached and made most recently used."""
        keys = self.block_keys(ids, salt)
        blocks = self.blocks
        limit = (len(ids) - 1) // self.block_size if ids else 0
        hit = 0
        for key in keys[:limit]:
            if key not in blocks:
                break
            hit += 1
        for key in reversed(keys):
            if key in blocks:
                blocks.move_to_end(key)
            else:
                blocks[key] = None
        while len(blocks) > self.capacity_blocks:
            blocks.popitem(last=False)
        cached = hit * self.block_size
        self.queries += len(ids)
        self.hits += cached
        return cached

    def reset(self) -> None:
        self.blocks.clear()
        self.resets += 1

    @property
    def usage(self) -> float:
        """Fraction of the capacity holding cached blocks."""
        return len(self.blocks) / self.capacity_blocks
