"""The parent side of a point over several clients: set up, start, watch, merge, write.

The point's set-up and finish are the single-process ones (:mod:`loadgen.point`), so
the files look alike; the transport is worker processes on this machine
(:mod:`loadgen.scale.procpool`) or Ray actors across machines
(:mod:`loadgen.scale.ray_pool`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from loadgen import interrupts
from loadgen import results as results_mod
from loadgen.collect import PointCollector
from loadgen.metrics import SATURATION_LAG_P99_MS
from loadgen.point import finish_point, point_setup, point_telemetry
from loadgen.progress import Progress, print_summary
from loadgen.records import Prompt
from loadgen.scale import procpool, ray_pool
from loadgen.scale.merge import concat_stores, merge_outcomes, rebuild_from_stores
from loadgen.scale.split import plan_tasks
from loadgen.scale.worker import SummedCounters
from loadgen.server_checks import PreflightError
from loadgen.store import StoreFiles, store_layout

if TYPE_CHECKING:
    from loadgen.config import RunConfig


# ---------------------------------------------------------------- one point, end to end


def run_point_workers(
    cfg: RunConfig,
    pre: Any,
    prompts: Sequence[Prompt],
    concurrency: int | None,
    rate: float,
    date: str,
    *,
    console: Any,
    progress_console: Any = None,
    repeat: int = 1,
) -> dict[str, Any]:
    """:func:`loadgen.sweep.run_point` over worker processes or Ray actors."""
    setup = point_setup(cfg, pre, len(prompts), concurrency, rate, date, repeat)
    files, offsets, target = setup.files, setup.offsets, setup.target
    transport: ModuleType
    if cfg.schedule.ray_address:
        transport = ray_pool  # Ray itself is imported by ray_pool only when a point uses it
        try:
            workers = cfg.schedule.workers or transport.default_workers(cfg.schedule.ray_address)
            tasks = plan_tasks(cfg, target, prompts, offsets, concurrency, files.store, workers, pre.warm_prompts)
            transport.check_capacity(cfg.schedule.ray_address, len(tasks))
        except RuntimeError as exc:
            raise PreflightError(str(exc)) from None
    else:
        transport = procpool
        tasks = plan_tasks(cfg, target, prompts, offsets, concurrency, files.store, cfg.schedule.workers,
                           pre.warm_prompts)
    for task in tasks:
        task.max_model_len = pre.max_model_len  # a session turn that would not fit ends its session
    counters = SummedCounters(len(tasks))
    title = f"{setup.title} ({len(tasks)} {'actors' if cfg.schedule.ray_address else 'workers'})"
    telemetry = point_telemetry(cfg, files, counters, console)
    # The live display and the telemetry scraper (threads) start once the workers are
    # forked: a child must not inherit a lock one of them holds.
    prog = Progress(counters, len(prompts), title, console=progress_console, enabled=cfg.output.progress)
    threads: list[Any] = []

    def started() -> None:
        for ctx in (telemetry, prog):
            ctx.__enter__()
            threads.append(ctx)

    try:
        outcomes = transport.run_tasks(tasks, counters=counters, on_tick=prog.tick,
                                       address=cfg.schedule.ray_address, on_started=started)
        ended_ns = time.perf_counter_ns()  # the workers' clocks are this machine's (Ray: near enough)
    finally:
        for ctx in reversed(threads):
            ctx.__exit__(None, None, None)
    failed = [o for o in outcomes if o.result is None]
    why = "; ".join(f"worker {o.index} {o.error}" + _stored(o.store) for o in failed)
    # Every worker died: the figures are rebuilt from the rows they had stored (a partial point), if any.
    rebuilt = len(failed) == len(outcomes)
    merged = rebuild_from_stores(outcomes, goodput_slos_ms=cfg.output.goodput_slos_ms,
                                 inline_limit=cfg.output.inline_requests) if rebuilt else \
        merge_outcomes(outcomes, goodput_slos_ms=cfg.output.goodput_slos_ms, inline_limit=cfg.output.inline_requests,
                       saturation_lag_p99_ms=SATURATION_LAG_P99_MS)
    if merged is None:
        raise PreflightError(f"every worker failed before storing a request, so no result was written: {why}")
    if merged.signal is not None:
        interrupts.note(merged.signal)
    for row, task in zip(merged.workers, sorted(tasks, key=lambda t: t.index), strict=True):
        row["concurrency"] = task.concurrency
    live = [o.store for o in outcomes if o.store is not None and (rebuilt or o.result is not None)]
    per_request = concat_stores(live, files.store)
    if rebuilt:
        per_request["complete"] = False
        per_request["error"] = (f"every worker failed ({why}); the figures are rebuilt from the "
                                f"{per_request['rows']} rows they had stored, which this store holds")
    elif failed:
        per_request["complete"] = False
        per_request["error"] = "; ".join(
            f"worker {o.index} {o.error}: its requests are not in the figures"
            + (f" (rows it stored: {o.store.requests.name})" if o.store is not None and o.store.requests.exists()
               else "") for o in failed)
    start_epoch = merged.start_epoch_s or time.time() - merged.span_ns / 1e9
    info = results_mod.PointInfo(
        concurrency=concurrency, rate=rate, date=date, model=pre.model, tokenizer_id=pre.tokenizer_id,
        start_epoch_s=start_epoch, end_epoch_s=start_epoch + merged.span_ns / 1e9, partial=merged.partial,
        repeat=repeat,
    )
    collector = PointCollector(merged.aggregate, None)
    collector.warmup_requests = merged.warmup_requests
    result = finish_point(
        cfg, info, collector, 0, merged.span_ns, merged.lag_samples_ns, files,
        server_version=pre.server_version, verification=pre.point_verification(), max_in_flight=merged.max_in_flight,
        server=pre.server, cache_reset=pre.cache_reset, cache_salt=pre.cache_salt,
        telemetry=telemetry.result_keys(ended_ns - merged.span_ns, ended_ns, start_epoch), trace=pre.trace,
        extra_fields={
            "per_request": per_request,
            "workers": len(tasks),
            "worker_mode": "ray" if cfg.schedule.ray_address else "processes",
            "workers_failed": [o.index for o in failed],
            "per_worker": merged.workers,
            "loop_lag_of": "the worker with the highest loop-lag p99 (per_worker has each one)",
            **({"rebuilt_from_stores": True} if rebuilt else {}),
        },
    )
    print_summary(result, console, str(files.result))
    if failed:
        console.print(f"[yellow]partial: {per_request['error']}[/yellow]", soft_wrap=True)
    if rebuilt:  # the sweep stops here: the next point's workers would die the same way
        raise PreflightError(f"every worker failed ({why}); a partial result rebuilt from the "
                             f"{per_request['rows']} rows they had stored was written to {files.result}")
    return result


def _stored(files: StoreFiles | None) -> str:
    """Where a failed worker's stored rows are, if it stored any."""
    if files is None or not files.requests.exists():
        return ""
    try:
        rows = min(store_layout(files.requests)[1:])
    except (OSError, ValueError):
        return f" (its store: {files.requests})"
    return f" (its {rows} stored rows: {files.requests})" if rows else ""
