"""The continuous-batching timing model, free of clocks and sockets.

The server and the profile fit drive the very same ``Engine.step``: the server
sleeps for the returned duration on a real clock, the fit adds it to a virtual
one. That is what lets the fit be checked as a pure function and guarantees the
server behaves like the fitted model.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass

from launcher.sim.profiles import Profile
from launcher.sim.timing import StepCost

# SGLang's constants for its admission estimate: outputs are counted up to this many
# tokens, and a retraction leaves room for this many more decode steps.
CLIP_MAX_NEW_TOKENS = 4096
RETRACT_DECODE_STEPS = 20


class Seq:
    """One request inside the engine. Mutable and slotted: the step loop touches
    thousands of these per second."""

    __slots__ = (
        "rid",
        "prompt_len",
        "max_out",
        "target_out",
        "arrival",
        "admitted_at",
        "prefilled",
        "prefill_target",
        "generated",
        "pending",
        "reserved",
        "done",
        "cancelled",
        "first_at",
        "finished_at",
        "sink",
    )

    def __init__(self, rid: int, prompt_len: int, max_out: int, target_out: int, arrival: float = 0.0) -> None:
        self.rid = rid
        self.prompt_len = prompt_len
        self.max_out = max_out
        self.target_out = min(max(1, target_out), max_out)
        self.arrival = arrival
        self.admitted_at = -1.0
        self.prefilled = 0
        self.prefill_target = prompt_len  # grows when a preempted sequence must recompute its output
        self.generated = 0
        self.pending = 0  # tokens produced by the last step, not yet delivered
        self.reserved = 0
        self.done = False
        self.cancelled = False
        self.first_at = -1.0
        self.finished_at = -1.0
        self.sink = None

    @property
    def finish_reason(self) -> str:
        return "length" if self.generated >= self.max_out else "stop"


class Engine:
    """Slots, a FCFS waiting queue, a KV budget in tokens, a per-step token budget.

    With the profile's ``kv_allocation = "reserve"`` (the default) KV is reserved for the whole request (prompt + max_tokens) at
    admission, so no preemption is ever needed. With ``"lazy"`` KV grows token by
    token as in vLLM: when a step's decodes do not fit, the most recently admitted
    running request is preempted (its KV freed, back to the front of the queue) and
    later recomputes its prompt and the output so far, as vLLM's recompute does (the
    vLLM profile uses it, counted in whole blocks with one preallocated as vLLM V1 does:
    ``kv_block_tokens``, ``kv_preallocate_blocks``).
    ``"ratio"`` grows KV the same way but admits as SGLang does, against a decaying
    estimate of the outputs the running requests still produce (docs/sim.md).
    """

    def __init__(self, profile: Profile, tokens_per_step: int = 1) -> None:
        self.profile = profile
        self.tokens_per_step = max(1, int(tokens_per_step))
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.kv_used = 0
        # KV grows with every token for "lazy" (vLLM) and "ratio" (SGLang); "ratio" also
        # admits against a decaying estimate of the outputs still to come
        self.ratio_admission = profile.kv_allocation == "ratio"
        self.lazy = profile.kv_allocation == "lazy" or self.ratio_admission
        self.new_token_ratio = profile.new_token_ratio_init
        self._ratio_decay = (profile.new_token_ratio_init - profile.new_token_ratio_min) / profile.new_token_ratio_decay_steps
        self.preemptions = 0
        self.steps = 0
        self.prompt_tokens_total = 0  # every prompt token of each request once, cached or not (vLLM's counter)
        self.prefill_tokens_total = 0  # prompt tokens computed: cache hits excluded, recomputation included
        self.generation_tokens_total = 0
        self.cost = StepCost(profile)
        self._batch: tuple[list[Seq], list[Seq]] | None = None

    def admissible(self, prompt_len: int, max_out: int) -> str | None:
        """Why a request can never run here (None when it can)."""
        p = self.profile
        if prompt_len + max_out > p.kv_tokens:
            return f"prompt + max_tokens = {prompt_len + max_out} exceeds the KV cache of {p.kv_tokens} tokens"
        if not p.chunked_prefill and prompt_len > p.max_batched_tokens:
            return f"prompt of {prompt_len} tokens exceeds the per-step budget of {p.max_batched_tokens} tokens"
        return None

    def submit(self, seq: Seq) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def kv_usage(self) -> float:
        return self.kv_used / self.profile.kv_tokens

    def _admit(self, now: float, limit_tokens: int | None) -> None:
        """Move waiting requests into slots while slots, KV (and prefill budget) allow."""
        p = self.profile
        running = self.running
        waiting = self.waiting
        # SGLang: what is free, minus the share of every running output still to come
        room = (p.kv_tokens - self.kv_used - self.new_token_ratio * sum(
            min(s.max_out - s.generated, CLIP_MAX_NEW_TOKENS) for s in running)) if self.ratio_admission and waiting else 0.0
        # prompt tokens the running requests may still take on (profile's running_prompt_tokens)
        prompt_room = (p.running_prompt_tokens - sum(s.prompt_len for s in running)
                       if p.running_prompt_tokens and waiting else 0)
        while waiting:
            seq = waiting[0]
            if seq.cancelled:
                waiting.popleft()
                continue
            if len(running) >= p.max_num_seqs:
                return
            # lazy: the prompt (plus output to recompute) and the token the prefill produces
            need = self._blocks(seq.prefill_target + 1) if self.lazy else seq.prompt_len + seq.max_out
            if self.kv_used + need > p.kv_tokens:
                return
            if p.running_prompt_tokens:  # an idle engine still takes one request
                if seq.prompt_len > prompt_room and running:
                    return
                prompt_room -= seq.prompt_len
            if self.ratio_admission:  # a new request is charged its whole (clipped) output
                charge = seq.prefill_target + min(seq.max_out - seq.generated, CLIP_MAX_NEW_TOKENS)
                if charge >= room and running:  # an idle engine takes whatever fits its KV
                    return
                room -= charge
            if limit_tokens is not None and limit_tokens <= 0:
                return
            waiting.popleft()
            if self.lazy:
                need = self._grant(need)
            seq.reserved = need
            seq.admitted_at = now
            self.kv_used += need
            running.append(seq)
            if limit_tokens is not None:
                limit_tokens -= seq.prefill_target

    def _blocks(self, tokens: int) -> int:
        """KV taken by ``tokens`` tokens: whole blocks of the profile's ``kv_block_tokens``."""
        block = self.profile.kv_block_tokens
        return tokens if block == 1 else -(-tokens // block) * block

    def _grant(self, need: int) -> int:
        """The KV handed out for a request that needs ``need`` more tokens (whole blocks, known
        to be free): that plus the profile's preallocated blocks, as far as they are free."""
        extra = self.profile.kv_preallocate_blocks
        if not extra:
            return need
        block = self.profile.kv_block_tokens
        free = (self.profile.kv_tokens - self.kv_used - need) // block * block
        return need + min(extra * block, max(0, free))

    def _after_retraction(self) -> None:
        """SGLang's estimate after a retraction: the share of the remaining requests'
        outputs decoded so far plus some steps of headroom, so that admission pauses."""
        running = self.running
        total = sum(min(s.max_out, CLIP_MAX_NEW_TOKENS) for s in running)
        if total:
            decoded = sum(s.generated for s in running)
            self.new_token_ratio = min(1.0, (decoded + RETRACT_DECODE_STEPS * len(running)) / total)

    def _preempt(self, seq: Seq) -> None:
        """Free a running sequence's KV and queue it first, to recompute what it had."""
        self.running.remove(seq)
        self.kv_used -= seq.reserved
        seq.reserved = 0
        seq.prefilled = 0
        seq.prefill_target = seq.prompt_len + seq.generated
        self.waiting.appendleft(seq)
        self.preemptions += 1

    def _grow(self, decode: list[Seq]) -> list[Seq]:
        """Lazy KV: find room for this step's new tokens, preempting from the back of the
        running list until it fits; returns the decodes that still run (a preempted
        sequence has ``prefilled == 0``)."""
        kv_tokens = self.profile.kv_tokens
        k = self.tokens_per_step
        kept: list[Seq] = []
        for seq in decode:
            if seq.prefilled == 0:  # preempted to make room for an earlier sequence
                continue
            need = self._blocks(seq.prompt_len + seq.generated + min(k, seq.target_out - seq.generated))
            need -= seq.reserved
            while need > 0 and self.kv_used + need > kv_tokens:
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.prefilled == 0:
                break  # it preempted itself: everything after it is gone too
            if need > 0:
                need = self._grant(need)
                self.kv_used += need
                seq.reserved += need
            kept.append(seq)
        return kept

    def step(self, now: float = 0.0) -> tuple[float, list[Seq]]:
        """Plan and execute one engine step that starts at ``now``.

        Returns the step's duration and the sequences that produced tokens (their
        ``pending`` counts them; ``done`` marks the finished ones, already out of
        the batch). The tokens exist at ``now + duration``.
        """
        duration = self.plan(now)
        return duration, self.finish()

    @property
    def planned(self) -> bool:
        return self._batch is not None

    def plan(self, now: float = 0.0) -> float:
        """First half of a step: admit, build the batch, return its duration.

        The server plans the next step as soon as the previous one ends and only
        then writes the previous step's tokens to the sockets, so socket work
        overlaps the next step like output processing does in a real engine.
        """
        p = self.profile
        budget = p.max_batched_tokens
        decode: list[Seq] = []
        prefill_tokens = 0
        completes_prefill: list[Seq] = []

        # One pass: drop cancelled sequences (free their KV), collect decoders.
        running = self.running
        keep: list[Seq] = []
        dropped = False
        for seq in running:
            if seq.cancelled:
                self.kv_used -= seq.reserved
                dropped = True
                continue
            keep.append(seq)
            if seq.prefilled >= seq.prefill_target:
                decode.append(seq)
        if dropped:
            self.running = running = keep
        if self.lazy and decode:
            before = self.preemptions
            decode = self._grow(decode)
            running = self.running
            if self.ratio_admission:
                if self.preemptions > before:
                    self._after_retraction()
                else:
                    self.new_token_ratio = max(self.profile.new_token_ratio_min, self.new_token_ratio - self._ratio_decay)

        prefill_only = False
        if p.schedule == "prefill-first":
            self._admit(now, budget)
            running = self.running
            prefill_only = len(running) > len(decode)
        if prefill_only:
            decode = []
        else:
            budget -= len(decode)
            if p.schedule == "mixed":
                self._admit(now, None)
                running = self.running
        if prefill_only or (p.schedule == "mixed" and len(running) > len(decode)):
            for seq in running:
                if budget <= 0:
                    break
                left = seq.prefill_target - seq.prefilled
                if left <= 0:
                    continue
                # a recomputation longer than the step budget is chunked even without chunked prefill
                if left > budget and not (p.chunked_prefill or left > p.max_batched_tokens):
                    break
                chunk = left if left <= budget else budget
                seq.prefilled += chunk
                budget -= chunk
                prefill_tokens += chunk
                if seq.prefilled >= seq.prefill_target:
                    completes_prefill.append(seq)

        context = sum(seq.prompt_len + seq.generated for seq in decode) if self.cost.needs_context else 0
        duration = self.cost.seconds(len(decode), context, prefill_tokens)
        self.steps += 1
        self.prefill_tokens_total += prefill_tokens
        self._batch = (decode, completes_prefill)
        return duration

    def finish(self) -> list[Seq]:
        """Second half of a step: its tokens now exist. Returns who got tokens."""
        if self._batch is None:
            return []
        decode, completes_prefill = self._batch
        self._batch = None
        k = self.tokens_per_step
        finished = False
        produced = 0
        if k == 1:
            for seq in decode:
                g = seq.generated + 1
                seq.generated = g
                seq.pending += 1
                if g >= seq.target_out:
                    seq.done = True
                    finished = True
            produced = len(decode)
        else:
            for seq in decode:
                n = seq.target_out - seq.generated
                if n > k:
                    n = k
                seq.generated += n
                seq.pending += n
                produced += n
                if seq.generated >= seq.target_out:
                    seq.done = True
                    finished = True
        emitted = decode
        for seq in completes_prefill:
            if seq.generated == 0:  # a first prefill, not the recomputation of a preempted request
                self.prompt_tokens_total += seq.prompt_len
            seq.generated += 1
            seq.pending += 1
            produced += 1
            emitted.append(seq)
            if seq.generated >= seq.target_out:
                seq.done = True
                finished = True
        self.generation_tokens_total += produced
        if finished:
            keep = []
            for seq in self.running:
                if seq.done:
                    self.kv_used -= seq.reserved
                else:
                    keep.append(seq)
            self.running = keep
        return emitted


def natural_length(profile: Profile, rng: random.Random, max_out: int) -> int:
    """Where the model would emit EOS on its own: log-normal around the profile's
    median, capped by ``max_tokens``. A median of 0 means never stop early."""
    if profile.natural_len_median <= 0:
        return max_out
    if profile.natural_len_sigma <= 0:
        n = profile.natural_len_median
    else:
        n = math.exp(rng.gauss(math.log(profile.natural_len_median), profile.natural_len_sigma))
    return max(1, min(max_out, int(round(n))))


@dataclass(frozen=True, slots=True)
class SimRequest:
    arrival: float
    prompt_len: int
    output_len: int


@dataclass(frozen=True, slots=True)
class SimResult:
    """When each request got its first and last token, on the virtual clock."""

    arrival: float
    first: float
    finish: float
    output_len: int

    @property
    def ttft(self) -> float:
        return self.first - self.arrival

    @property
    def tpot(self) -> float | None:
        if self.output_len < 2:
            return None
        return (self.finish - self.first) / (self.output_len - 1)


def simulate(profile: Profile, requests: list[SimRequest], tokens_per_step: int = 1) -> list[SimResult]:
    """Run the engine on a virtual clock; pure and deterministic."""
    engine = Engine(profile, tokens_per_step)
    order = sorted(range(len(requests)), key=lambda i: requests[i].arrival)
    seqs = [
        Seq(i, requests[i].prompt_len, requests[i].output_len, requests[i].output_len, requests[i].arrival)
        for i in range(len(requests))
    ]
    t = 0.0
    nxt = 0
    while nxt < len(order) or engine.has_work():
        while nxt < len(order) and requests[order[nxt]].arrival <= t:
            engine.submit(seqs[order[nxt]])
            nxt += 1
        if not engine.has_work():
            t = requests[order[nxt]].arrival
            continue
        duration, emitted = engine.step(t)
        if not emitted and not engine.running and (duration <= 0 or engine.waiting):
            raise RuntimeError("engine made no progress (a request does not fit the KV cache?)")
        t += duration
        for seq in emitted:
            if seq.first_at < 0:
                seq.first_at = t
            seq.pending = 0
            if seq.done:
                seq.finished_at = t
    return [SimResult(s.arrival, s.first_at, s.finished_at, s.generated) for s in seqs]
