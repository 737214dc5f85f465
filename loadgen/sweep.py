"""The sweep loop: check the server once, build the prompts once, then run every load point in order.

The server checks are :mod:`loadgen.server_checks` (each failure one line naming the
problem and the fix, before any prompt is built), the prompt set :mod:`loadgen.prompt_set`,
one point in this process :mod:`loadgen.point`, and a point over several clients
:mod:`loadgen.scale.driver`. Here: which points, how often (``--repeat``, ``--repeat
auto``), the sweep table, and what a stop signal leaves behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console

from loadgen import convergence, interrupts
from loadgen.config import RunConfig
from loadgen.point import point_paths, reset_cache, run_point_here
from loadgen.progress import sweep_table
from loadgen.prompt_set import build_prompts, verify_prompts
from loadgen.records import Prompt
from loadgen.server_checks import Preflight, PreflightError, preflight


def run_point(
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
    """Run one (concurrency, rate) point against the server and write its files.

    Repeat N of a point (``--repeat``) draws its arrival times with seed + N - 1,
    so repeats are independent samples of the same load. With ``--workers`` or
    ``--ray-address`` the point runs over several clients (:mod:`loadgen.scale.driver`).

    A stop signal during the run ends it early (a partial point); one that arrives
    while the files are written waits until they are complete. Either way the point
    is written first and :class:`~loadgen.interrupts.Interrupted` raised after,
    carrying the point's result.
    """
    result: dict[str, Any] | None = None
    if cfg.target.reset_prefix_cache:
        pre.cache_reset = reset_cache(cfg, console)
    try:
        with interrupts.deferred():
            if cfg.schedule.workers > 1 or cfg.schedule.ray_address:
                from loadgen.scale.driver import run_point_workers  # late: multiprocessing only for --workers

                result = run_point_workers(cfg, pre, prompts, concurrency, rate, date, console=console,
                                           progress_console=progress_console, repeat=repeat)
            else:
                result = run_point_here(cfg, pre, prompts, concurrency, rate, date, console=console,
                                         progress_console=progress_console, repeat=repeat)
    except interrupts.Interrupted as exc:
        if result is not None:
            exc.results.append(result)
        raise
    pre.check_recount()
    return result


def repeats_done(cfg: RunConfig, runs: list[dict[str, Any]], console: Console) -> bool:
    """--repeat auto: say where the point's intervals stand; True once they are narrow enough."""

    width, metrics = cfg.schedule.repeat_width or 0.0, cfg.schedule.repeat_metrics
    console.print(convergence.describe(runs, metrics, width), highlight=False, soft_wrap=True)
    return convergence.done(runs, metrics, width)


def run_all(
    cfg: RunConfig,
    *,
    console: Console,
    progress_console: Console | None = None,
    prompt_source: Callable[[RunConfig, Preflight], Sequence[Prompt]] | None = None,
) -> list[dict[str, Any]]:
    """Pre-flight, prompts, then every point in order; stops after an interrupted point."""
    pre = preflight(cfg)
    prompts = (prompt_source or build_prompts)(cfg, pre)
    if not isinstance(prompts, Sequence):
        prompts = list(prompts)
    if not prompts:
        raise PreflightError("the workload produced no prompts; check --dataset-name/--dataset-path and the length filters")
    verify_prompts(cfg, pre, prompts, console)
    date = time.strftime("%Y%m%d-%H%M%S")
    names = [point_paths(cfg, pre, c, r, date, k).result for c, r in cfg.points() for k in range(1, cfg.schedule.repeat + 1)]
    if len(set(names)) != len(names):
        raise PreflightError("--result-filename gives two points the same file; add {concurrency} and {rate} to it")
    console.print(
        f"loadgen: {cfg.target.backend} {pre.model} at {cfg.target.base_url}; {len(prompts)} prompts; "
        f"{len(cfg.points())} point(s); ignore_eos={cfg.effective_ignore_eos}",
        highlight=False, soft_wrap=True,
    )
    out: list[dict[str, Any]] = []
    try:
        for concurrency, rate in cfg.points():
            for repeat in range(1, cfg.schedule.repeat + 1):
                out.append(run_point(cfg, pre, prompts, concurrency, rate, date,
                                     console=console, progress_console=progress_console, repeat=repeat))
                if cfg.schedule.repeat_width is not None and repeats_done(cfg, out[-repeat:], console):
                    break
    except interrupts.Interrupted as exc:
        exc.results[:0] = out  # the points written before this one
        raise
    finally:
        if len(out) > 1:
            console.print(sweep_table(out))
    return out
