"""How a point is dealt to N clients (pure): which requests, which concurrency share, how many workers.

The global timeline is computed once and request ``i`` goes to worker ``i mod N``
(:func:`partition`), so every worker's releases interleave with the others' and the
union is exactly the single-process schedule; the concurrency limit is split with the
remainder to the first workers (:func:`split_limit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from loadgen.records import Prompt
from loadgen.scale.worker import WorkerTask, worker_store_files
from loadgen.store import StoreFiles
from loadgen.workload.trace_prompts import TracePrompts

if TYPE_CHECKING:
    from loadgen.config import RunConfig


# ---------------------------------------------------------------- the plan (pure)


def partition(n: int, workers: int) -> list[np.ndarray]:
    """Indices of the requests each worker sends: round-robin, ``i -> i mod workers``.

    Every worker's share spans the whole timeline, so the workers' release streams
    interleave and their union is the single-process schedule, request for request.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return [np.arange(k, n, workers, dtype=np.int64) for k in range(workers)]


def split_limit(limit: int | None, workers: int) -> list[int | None]:
    """A global concurrency limit as per-worker limits that add up to it exactly.

    ``limit // workers`` each and one more for the first ``limit % workers`` — the
    same workers that round-robin gives one more request of a burst.
    """
    if limit is None:
        return [None] * workers
    if limit < workers:
        raise ValueError(f"a concurrency limit of {limit} cannot be split over {workers} workers")
    q, r = divmod(limit, workers)
    return [q + (1 if k < r else 0) for k in range(workers)]


def effective_workers(workers: int, concurrency: int | None, n_prompts: int) -> int:
    """Workers actually used for a point: never more than its limit or its requests."""
    return max(1, min(workers, concurrency if concurrency is not None else workers, n_prompts))


def plan_tasks(
    cfg: RunConfig,
    target: Any,
    prompts: Sequence[Prompt],
    offsets_s: np.ndarray,
    concurrency: int | None,
    store: StoreFiles,
    workers: int,
    warm_prompts: Sequence[Prompt] | None = None,
) -> list[WorkerTask]:
    """The global schedule cut into one task per worker (prompts are shared, not copied)."""
    n = effective_workers(workers, concurrency, len(prompts))
    shares = partition(len(prompts), n)
    limits = split_limit(concurrency, n)
    warm_shares = partition(cfg.schedule.warmup, n)
    warm = [len(s) for s in warm_shares]
    return [
        WorkerTask(
            index=k,
            target=target,
            # a trace replay's prompts stay lazy: each worker builds its own just before release
            prompts=prompts.subset(idx) if isinstance(prompts, TracePrompts) else [prompts[i] for i in idx],
            offsets_s=offsets_s[idx].tolist(),
            concurrency=limits[k],
            warmup=warm[k],
            duration_s=cfg.schedule.duration_s,
            grace_s=cfg.schedule.grace_s,
            store=worker_store_files(store, k),
            save_text=cfg.output.save_text,
            goodput_slos_ms=dict(cfg.output.goodput_slos_ms),
            inline_limit=cfg.output.inline_requests,
            warmup_s=cfg.schedule.warmup_s,
            warm_prompts=[warm_prompts[i % len(warm_prompts)] for i in warm_shares[k]] if warm_prompts else None,
            session_header=cfg.workload.session_header,
        )
        for k, idx in enumerate(shares)
    ]
