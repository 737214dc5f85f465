"""The sim's configuration and the state its handlers, streams and engine loop share.

Its own module so that the streams (:mod:`launcher.sim.streams`) can name the state they
write through without importing the HTTP surface (:mod:`launcher.sim.api`) that creates them.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import orjson

from launcher.sim import exposition as prom
from launcher.sim.engine import Engine
from launcher.sim.faults import FaultConfig
from launcher.sim.prefix_cache import DEFAULT_BLOCK_SIZE, PrefixCache
from launcher.sim.profiles import Profile
from launcher.sim.tokens import SimTokenizer


@dataclass(frozen=True, slots=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "deepseek-r1"
    tokenizer: str = "deepseek-r1"
    profile: Profile | None = None
    max_model_len: int = 8192
    tokens_per_chunk: int = 1
    seed: int = 0
    faults: FaultConfig = field(default_factory=FaultConfig)
    time_scale: float = 1.0  # the profile's costs are already divided by it; reported in /version
    prefix_cache: bool = True  # cache prompt blocks (vLLM's automatic prefix caching); off: no cached_tokens either
    block_size: int = DEFAULT_BLOCK_SIZE
    cache_reset_fault: str = ""  # "refuse" or "hang": how POST /reset_prefix_cache and /flush_cache misbehave
    reasoning_field: str = "reasoning_content"  # the delta field reasoning streams under (newer vLLM: reasoning)


class SimState:
    """Everything the handlers and the engine loop share."""

    def __init__(self, cfg: SimConfig, tokenizer: SimTokenizer) -> None:
        assert cfg.profile is not None
        self.cfg = cfg
        self.profile = cfg.profile
        self.model = cfg.model
        self.model_json = orjson.dumps(cfg.model)
        self.tok = tokenizer
        self.pieces = [p.encode() for p in tokenizer.pieces]
        self.pieces2 = self.pieces + self.pieces
        self.n_pieces = len(self.pieces)
        self.engine = Engine(cfg.profile, cfg.tokens_per_chunk)
        self.cache = PrefixCache(cfg.profile.kv_tokens, cfg.block_size) if cfg.prefix_cache else None
        self.rng = random.Random(cfg.seed)
        self.fault_rng = random.Random(cfg.faults.seed)
        self.stall_s = cfg.faults.stall_ms / 1000.0
        self.ids = itertools.count(1)
        self.started = time.monotonic()
        self.created = int(time.time())  # OpenAI's `created`: Unix seconds
        self.ready_at = self.started + cfg.faults.startup_delay
        self._wake: asyncio.Event | None = None
        self.ttft_hist = prom.Histogram(prom.TTFT_BUCKETS)
        self.itl_hist = prom.Histogram(prom.ITL_BUCKETS)
        self.e2e_hist = prom.Histogram(prom.REQUEST_BUCKETS)
        self.queue_hist = prom.Histogram(prom.REQUEST_BUCKETS)
        self.lateness_hist = prom.Histogram(prom.LATENESS_BUCKETS)
        self.lateness: list[float] = []  # raw samples (bounded), for exact percentiles in /sim/stats
        self.model_time = 0.0  # seconds of steps the timing model planned: what lateness is compared with
        self.finished: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()
        self.chunks_sent = 0
        self.chunks_at_reset = 0
        self.steps_at_reset = 0
        self.requests_total = 0
        self.executor = None

    # -- engine loop --------------------------------------------------------------
    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run_engine(self) -> None:
        """Run steps back to back on absolute deadlines (no drift).

        When a step ends: its tokens are committed, the next step is planned at
        once (its start is what "lateness" measures: actual minus planned start),
        and only then are the finished step's tokens written to the sockets, so
        that writing overlaps the next step's planned duration.
        """
        self._wake = asyncio.Event()
        engine = self.engine
        perf = time.perf_counter
        sleep = asyncio.sleep
        lateness = self.lateness
        next_start = perf()
        while True:
            if not engine.planned and not engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                next_start = perf()
            emitted = engine.finish()
            now = perf()
            deadline = None
            if engine.has_work():
                late = now - next_start
                self.lateness_hist.observe(late)
                if len(lateness) < 1_000_000:
                    lateness.append(late)
                if late > 0.25:  # hopelessly behind (machine stalled): re-anchor instead of bursting
                    next_start = now
                planned = engine.plan(now)
                self.model_time += planned
                deadline = next_start + planned
            for seq in emitted:
                sink = seq.sink
                if sink is not None:
                    sink.deliver(now)
                else:
                    seq.pending = 0
            if deadline is None:
                continue
            delay = deadline - perf()
            await sleep(delay if delay > 0 else 0)
            next_start = deadline

    # -- request helpers --------------------------------------------------------------
    def ready(self) -> bool:
        return time.monotonic() >= self.ready_at

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.UUID(int=self.rng.getrandbits(128)).hex}"
