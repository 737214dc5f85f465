"""One load point: its set-up, its files and its finish, in this process.

Per point: timeline (:mod:`loadgen.schedule`) → runner → metrics → three files (result
JSON, HDR interval log, optional per-request store) → summary. The same set-up and
finish serve a point spread over worker processes (:mod:`loadgen.scale.driver`), so
the files of both look alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from loadgen import interrupts, prefix_cache
from loadgen import results as results_mod
from loadgen.aggregate import Aggregate
from loadgen.client import Target
from loadgen.collect import PointCollector
from loadgen.config import RunConfig, rate_label
from loadgen.metrics import SATURATION_LAG_P99_MS
from loadgen.progress import Progress, print_summary
from loadgen.records import Prompt
from loadgen.runner import LiveCounters, run
from loadgen.schedule import ArrivalSpec, release_offsets
from loadgen.server_checks import Preflight, stream_target
from loadgen.store import RequestStore, StoreFiles, read_requests
from loadgen.telemetry import PointTelemetry
from loadgen.workload.trace_prompts import TraceSet

# ---------------------------------------------------------------- one point


@dataclass
class PointFiles:
    result: Path
    hlog: Path
    store: StoreFiles


def point_paths(cfg: RunConfig, pre: Preflight, concurrency: int | None, rate: float, date: str,
                repeat: int = 1) -> PointFiles:
    name = results_mod.render_filename(cfg.output.result_filename, cfg, concurrency, rate, pre.model, date, repeat)
    path = pre.output_dir / name
    return PointFiles(
        result=path,
        hlog=results_mod.sibling(path, ".hlog"),
        store=StoreFiles(
            requests=results_mod.sibling(path, ".requests.npy"),
            chunks=results_mod.sibling(path, ".chunks.npy") if cfg.output.save_requests else None,
            details=results_mod.sibling(path, ".details.jsonl"),
        ),
    )


def new_collector(cfg: RunConfig, files: PointFiles) -> PointCollector:
    """The aggregates and the per-request store one point's requests flow into."""
    return PointCollector(
        Aggregate(goodput_slos_ms=cfg.output.goodput_slos_ms or None, inline_limit=cfg.output.inline_requests),
        RequestStore(files.store, save_text=cfg.output.save_text),
        warmup_s=cfg.schedule.warmup_s,
    )


def finish_point(
    cfg: RunConfig,
    info: results_mod.PointInfo,
    collector: PointCollector,
    start_ns: int,
    end_ns: int,
    lag_samples_ns: Sequence[int],
    files: PointFiles,
    *,
    server_version: str | None = None,
    verification: dict[str, Any] | None = None,
    max_in_flight: int = 0,
    telemetry: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    extra_fields: dict[str, Any] | None = None,
    cache_reset: dict[str, Any] | None = None,
    cache_salt: str | None = None,
    trace: Any = None,
) -> dict[str, Any]:
    """Aggregates of one point → the result JSON and the interval log. No network.

    ``extra_fields`` are added to the result JSON (the workers of a multi-process point);
    ``trace`` (a TraceSet) adds the replay and its lag against the trace's times.

    The per-request store was written during the run; only the last batch is left.
    """
    collector.close(start_ns)
    agg = collector.aggregate
    summary = agg.summary(
        # --warmup-seconds: the figures cover the steady window only, throughput included
        min(start_ns + int(cfg.schedule.warmup_s * 1e9), end_ns), end_ns,
        # p95/p99 are always computed: vLLM and SGLang readers expect p99_*_ms and p95_itl_ms
        percentiles=sorted(set(cfg.output.percentiles) | {95.0, 99.0}),
        lag_samples_ns=lag_samples_ns,
        max_concurrency_observed=max_in_flight,
    )
    hists = agg.histograms()
    extra: dict[str, Any] = {
        "files": {"hlog": files.hlog.name, "requests": files.store.requests.name},
        "per_request": collector.store.describe() if collector.store is not None else None,
    }
    if verification is not None:
        extra["prompt_verification"] = verification
    if server:
        extra["server"] = dict(server)
    if cfg.schedule.repeat > 1:
        extra["repeat"] = {"index": info.repeat, "of": cfg.schedule.repeat}
        if cfg.schedule.repeat_width is not None:  # --repeat auto: "of" is at most
            extra["repeat"].update(of=None, max=cfg.schedule.repeat, width=cfg.schedule.repeat_width,
                                   metrics=list(cfg.schedule.repeat_metrics))
    if cfg.schedule.warmup_s:
        extra["warmup_seconds"] = cfg.schedule.warmup_s
    if trace is not None:
        extra["trace"] = trace_section(trace, summary.stats["release"])
    if agg.sessions is not None:
        extra["sessions"] = agg.sessions.summary()
    extra.update(extra_fields or {})
    info.warmup_requests = collector.warmup_requests
    extra.update(telemetry or {})  # server_metrics, gpu_metrics (loadgen.telemetry)
    extra["prefix_cache"] = prefix_cache.section(summary, extra.get("server_metrics"), dataset=cfg.workload.dataset,
                                                 prefix_len=cfg.workload.prefix_len, reset_outcome=cache_reset,
                                                 salt=cache_salt, salt_mode=cfg.target.salt_mode,
                                                 **store_cache_figures(cfg, trace, files.store.requests))
    result = results_mod.build_result(
        cfg, info, summary, agg.inline_rows(), hists, server_version=server_version, extra=extra
    )
    results_mod.write_hlog(files.hlog, hists, info, cfg)
    results_mod.write_result(files.result, result)
    return result


@dataclass
class PointSetup:
    """What every way of running a point starts from (here, or over workers)."""

    files: PointFiles
    offsets: np.ndarray  # release offsets, seconds
    target: Target
    title: str


def point_setup(cfg: RunConfig, pre: Preflight, n_prompts: int, concurrency: int | None, rate: float, date: str,
                repeat: int) -> PointSetup:
    """Files, release timeline (seed + repeat - 1: repeats are independent samples), target
    and display title of one point."""
    files = point_paths(cfg, pre, concurrency, rate, date, repeat)
    offsets = pre.trace.release_s if pre.trace is not None else release_offsets(
        n_prompts, ArrivalSpec(rate, cfg.schedule.arrival, cfg.schedule.burstiness), seed=cfg.seed + repeat - 1)
    title = f"c={concurrency if concurrency is not None else 'unl.'} rate={rate_label(rate)}"
    if cfg.schedule.repeat > 1:
        title += f" repeat {repeat}/{cfg.schedule.repeat}"
    return PointSetup(files, offsets, stream_target(cfg, pre.model, pre.cache_salt), title)


def point_telemetry(cfg: RunConfig, files: PointFiles, counters: Any, console: Console) -> PointTelemetry:
    """The point's server/GPU telemetry (a context manager around the run), notes to ``console``."""

    return PointTelemetry(cfg, files.result, counters,
                          note=lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True))


def reset_cache(cfg: RunConfig, console: Console) -> dict[str, Any]:
    """``--reset-prefix-cache`` before a point: the outcome is recorded, a failure is one line."""
    outcome = prefix_cache.reset(cfg.target.base_url, api_key=cfg.target.api_key, connection=cfg.connection(),
                                 timeout_s=min(prefix_cache.RESET_TIMEOUT_S, cfg.target.timeout_s))
    if not outcome["ok"]:
        console.print(f"note: {outcome['message']}", markup=False, highlight=False, soft_wrap=True)
    return outcome


def run_point_here(
    cfg: RunConfig,
    pre: Preflight,
    prompts: Sequence[Prompt],
    concurrency: int | None,
    rate: float,
    date: str,
    *,
    console: Console,
    progress_console: Console | None = None,
    repeat: int = 1,
) -> dict[str, Any]:
    """:func:`run_point` in this process."""

    setup = point_setup(cfg, pre, len(prompts), concurrency, rate, date, repeat)
    files, offsets, target, title = setup.files, setup.offsets, setup.target, setup.title
    counters = LiveCounters(0, 0, 0, 0, 0)
    telemetry = point_telemetry(cfg, files, counters, console)
    collector = new_collector(cfg, files)
    start_epoch = time.time()
    try:
        with telemetry, Progress(counters, len(prompts), title, console=progress_console,
                                 enabled=cfg.output.progress) as prog:
            outcome = run(
                target,
                prompts,
                offsets.tolist(),
                concurrency=concurrency,
                warmup=cfg.schedule.warmup,
                warm_prompts=pre.warm_prompts,
                duration_s=cfg.schedule.duration_s,
                counters=counters,
                on_tick=prog.tick,
                grace_s=cfg.schedule.grace_s,
                sink=collector,
                session_header=cfg.workload.session_header,
                max_model_len=pre.max_model_len,
            )
    except BaseException:
        collector.close(0)
        raise
    if outcome.signal is not None:
        interrupts.note(outcome.signal)
    span_s = max(outcome.end_ns - outcome.start_ns, 0) / 1e9
    info = results_mod.PointInfo(
        concurrency=concurrency,
        rate=rate,
        date=date,
        model=pre.model,
        tokenizer_id=pre.tokenizer_id,
        start_epoch_s=start_epoch,
        end_epoch_s=start_epoch + span_s,
        partial=bool(outcome.partial),
        repeat=repeat,
    )
    result = finish_point(
        cfg, info, collector, outcome.start_ns, outcome.end_ns, outcome.lag_samples_ns, files,
        server_version=pre.server_version, verification=pre.point_verification(),
        max_in_flight=outcome.max_in_flight, server=pre.server,
        cache_reset=pre.cache_reset, cache_salt=pre.cache_salt,
        telemetry=telemetry.result_keys(outcome.start_ns, outcome.end_ns, start_epoch), trace=pre.trace,
    )
    print_summary(result, console, str(files.result))
    return result


# ---------------------------------------------------------------- the whole run


def trace_section(trace: Any, release: Any) -> dict[str, Any]:
    """The result's ``trace`` key. Release lateness is intended → released (the release loop's
    own stamp), so a connection opened or a slow write does not count against the schedule."""
    return trace.result_section(release.median, release.percentiles.get(99.0), release.max,
                                behind_p99_ms=SATURATION_LAG_P99_MS)


def store_cache_figures(cfg: RunConfig, trace: TraceSet | None, store_path: Path) -> dict[str, Any]:
    """The hit rate per trace window (a replay) or per session turn, from the point's per-request
    store; nothing for other workloads, or when the store cannot be read."""
    sessions = cfg.workload.dataset == "sessions"
    if not sessions and (trace is None or trace.times_s is None):
        return {}
    try:
        rows = read_requests(store_path)
    except (OSError, ValueError):
        return {}
    if sessions:
        return {"turns": prefix_cache.by_turn(rows)}
    assert trace is not None and trace.times_s is not None  # checked above, before the store was read
    return {"windows": prefix_cache.by_window(rows, trace.prompts.rows, trace.times_s)}
