"""How long one engine step takes: the sim's step-time equation, in one place.

The engine loop (server and virtual clock alike) and the profile fit both call
:meth:`StepCost.seconds`, so a fitted profile predicts exactly what the running
sim does. The equation (docs/sim.md, "The timing model"):

    step = base_ms
         + decode_seq_ms      x padded(B) ^ decode_seq_exp          # B decoding sequences
         + decode_doubling_ms x log2(max(1, padded(B) / decode_knee))
         + decode_ctx_ms      x C / 1000                            # C = KV tokens those B attend over
         + eager_step_ms                                            # a step run without a CUDA graph
         + prefill_step_ms + prefill_token_ms x T ^ prefill_token_exp  # a step prefilling T prompt tokens

``padded(B)`` is the smallest captured CUDA-graph batch size >= B (SGLang pads a
decode batch to it); a decode batch above the largest captured size, a step with
prompt tokens, or a profile without captured sizes (vLLM ``--enforce-eager``)
runs eagerly and pays ``eager_step_ms``.
"""

from __future__ import annotations

import math
from bisect import bisect_left

from launcher.sim.profiles import Profile


class StepCost:
    """A profile's costs, converted once to seconds; ``seconds`` runs every step."""

    __slots__ = ("_base", "_per_seq", "_exp", "_doubling", "_knee", "_per_ctx", "_eager", "_per_tok", "_tok_exp",
                 "_prefill_step", "_graphs")

    def __init__(self, profile: Profile) -> None:
        self._base = profile.base_ms / 1000.0
        self._per_seq = profile.decode_seq_ms / 1000.0
        self._exp = float(profile.decode_seq_exp)
        self._doubling = profile.decode_doubling_ms / 1000.0
        self._knee = float(profile.decode_knee)
        self._per_ctx = profile.decode_ctx_ms / 1e6  # per KV token
        self._eager = profile.eager_step_ms / 1000.0
        self._per_tok = profile.prefill_token_ms / 1000.0
        self._tok_exp = float(profile.prefill_token_exp)
        self._prefill_step = profile.prefill_step_ms / 1000.0
        self._graphs = tuple(sorted(profile.graph_batch_sizes))

    @property
    def needs_context(self) -> bool:
        """Whether the engine must sum the decoders' context (skipped when free)."""
        return self._per_ctx > 0.0

    def padded(self, n_decode: int) -> tuple[int, bool]:
        """The batch size the decode kernels run at, and whether a CUDA graph runs it."""
        graphs = self._graphs
        if not graphs or n_decode > graphs[-1] or n_decode == 0:
            return n_decode, False
        return graphs[bisect_left(graphs, n_decode)], True

    def seconds(self, n_decode: int, context_tokens: int, prefill_tokens: int) -> float:
        """Duration of a step that decodes ``n_decode`` sequences holding ``context_tokens``
        KV tokens in all and prefills ``prefill_tokens`` prompt tokens."""
        batch, graphed = self.padded(n_decode)
        cost = self._base + self._per_ctx * context_tokens
        if batch:
            cost += self._per_seq * (batch if self._exp == 1.0 else batch**self._exp)
            if self._doubling and batch > self._knee:
                cost += self._doubling * math.log2(batch / self._knee)
        if prefill_tokens:
            tokens = prefill_tokens if self._tok_exp == 1.0 else prefill_tokens**self._tok_exp
            cost += self._prefill_step + self._per_tok * tokens
            graphed = False
        if not graphed:
            cost += self._eager
        return cost
