"""Run a capacity search against a server: probes through the sweep machinery, the record at the end.

The decisions are :mod:`loadgen.search.method`'s (pure); this module only runs what
they ask for: pre-flight and prompts once (:mod:`loadgen.server_checks`, :mod:`loadgen.prompt_set`), then each probe
as one time-based load point (``run_point``, with ``--warmup-seconds`` trimming
its start), whose per-request store is read back and judged. Every probe leaves
its ordinary result files; the search leaves one capacity record beside them
(``NAME.capacity.json``, schema ``loadgen-capacity/1``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from loadgen import interrupts
from loadgen.config import RunConfig, safe_filename_part
from loadgen.errors import LoadgenError
from loadgen.fileio import atomic_write
from loadgen.point import point_paths
from loadgen.prompt_set import build_prompts, verify_prompts
from loadgen.records import LazyPrompts, Prompt
from loadgen.search.method import Estimate, Probe, SearchSpec, estimate, evaluate, next_load, server_gone
from loadgen.server_checks import PreflightError, preflight
from loadgen.store import read_requests
from loadgen.sweep import run_point

CAPACITY_SCHEMA = "loadgen-capacity/1"
MAX_PROMPTS = 1_000_000  # a probe's prompt list is a cycling view, but its release timeline is an array


class Cycled(LazyPrompts):
    """``n`` prompts drawn in turn from a smaller built set, each with its own id.

    A probe needs as many requests as its load offers over its duration; building
    (and tokenizer-checking) that many distinct prompts would cost more than the
    probe. The set's prompts are reused in order, which is what any long benchmark
    over a finite dataset does.
    """

    def __init__(self, base: Sequence[Prompt], n: int) -> None:
        if not base:
            raise ValueError("no prompts to cycle")
        self.base = base
        self.n = n

    def __len__(self) -> int:
        return self.n

    def make(self, i: int) -> Prompt:
        p = self.base[i % len(self.base)]
        if p.id == i:
            return p
        # a reused session is a new conversation: its own id, so its figures stay its own
        return replace(p, id=i) if p.session is None else replace(p, id=i, session=replace(p.session, id=i))


def probe_requests(spec: SearchSpec, load: float, duration_s: float) -> int:
    """How many prompts a probe may release: the rate over the duration (+10 %), or for a
    concurrency a generous bound (the duration stops the probe long before)."""
    if spec.over == "rate":
        return min(MAX_PROMPTS, math.ceil(load * duration_s * 1.1) + 16)
    return min(MAX_PROMPTS, max(1000, int(load * duration_s * 50)))


def probe_config(cfg: RunConfig, spec: SearchSpec, load: float, index: int, stem: str) -> RunConfig:
    """The run configuration of probe ``index`` at ``load``: one point, its own file name."""
    kind = "rate{rate}" if spec.over == "rate" else "c{concurrency}"
    return cfg.updated(
        rates=[load] if spec.over == "rate" else [math.inf],
        concurrencies=[None] if spec.over == "rate" else [int(load)],
        result_filename=f"{stem}-probe{index:02d}-{kind}.json",
        repeat=1,
    )


class ServerLost(LoadgenError, RuntimeError):
    """The server stopped answering during a probe; the record of the probes before it is written."""

    exit_code = 3


@dataclass
class SearchOutcome:
    record: dict[str, Any]
    path: Path
    estimate: Estimate
    probes: list[Probe]


def load_unit(over: str, sessions: bool) -> str:
    """What the searched load counts: requests, or with sessions the users (a concurrency
    slot is held for a whole conversation) and the session arrival rate."""
    if sessions:
        return "sessions/s" if over == "rate" else "concurrent users"
    return "req/s" if over == "rate" else "concurrent requests"


def record(cfg: RunConfig, spec: SearchSpec, est: Estimate, probes: Sequence[Probe], *, model: str,
           server: dict[str, Any] | None, server_version: str | None, started: float, interrupted: bool = False,
           lost: Probe | None = None) -> dict[str, Any]:
    """The capacity record: the answer, its interval, the client check, and every probe."""
    at_answer = [p for p in probes if p.load in {est.capacity, est.bracket[1]}]
    client_bound = any(p.client_saturated for p in at_answer)
    lag = max((p.loop_lag_p99_ms or 0.0 for p in at_answer), default=None)
    unit = load_unit(spec.over, cfg.workload.dataset == "sessions")
    return {
        "schema": CAPACITY_SCHEMA,
        "label": cfg.output.label,
        "model_id": model,
        "over": spec.over,
        "unit": unit,
        "capacity": est.capacity,
        "status": "interrupted" if interrupted else "server_lost" if lost is not None else est.status,
        "bracket": list(est.bracket),
        "boundary": est.boundary,
        "interval": [est.ci_low, est.ci_high],
        "confidence": est.confidence,
        "interval_method": est.method,
        "client_saturated": client_bound,
        "client_loop_lag_p99_ms": lag,
        "search": spec.to_dict(),
        "duration_s": cfg.schedule.duration_s,
        "warmup_seconds": cfg.schedule.warmup_s,
        "arrival": cfg.schedule.arrival if spec.over == "rate" else None,
        # per turn with sessions (a value or a distribution, as given)
        "input_len": cfg.workload.asked_lengths()[0],
        "output_len": cfg.workload.asked_lengths()[1],
        "dataset_name": cfg.workload.dataset,
        "ignore_eos": cfg.effective_ignore_eos,
        "probes_at": est.to_dict()["probes_at"],
        "probes": [p.to_dict() for p in probes],
        **({"lost_probe": lost.to_dict()} if lost is not None else {}),
        "server": dict(server or {}),
        "server_version": server_version,
        "metadata": dict(cfg.output.metadata),
        "config": cfg.to_dict(),
        "seconds": round(time.monotonic() - started, 1),
    }


def describe(rec: dict[str, Any]) -> str:
    """One paragraph a person reads at the end of a search."""
    unit = rec["unit"]
    cap, (lo, hi), status = rec["capacity"], rec["interval"], rec["status"]
    slos = " and ".join(rec["search"]["slos"])
    if rec["search"].get("goodput_target"):
        slos += f", {rec['search']['goodput_target']:.0%} of requests within every limit"
    if status == "below_min":
        return f"capacity: no load down to {rec['search']['min']:g} {unit} met {slos}"
    if status == "server_lost":
        lost = rec["lost_probe"]
        return (f"the server stopped answering during probe {len(rec['probes']) + 1} ({rec['over']} {lost['load']:g}: "
                f"its last requests could not connect); the search stopped"
                + (f" — up to then {cap:g} {unit} met {slos}" if cap is not None else "")
                + ". Restart the server and run the search again")
    if cap is None:
        return f"capacity: not known — the search was interrupted before any load met {slos}"
    text = f"capacity: {cap:g} {unit} meet {slos}"
    if status == "above_max":
        text += f" (every probe passed up to --max {rec['search']['max']:g}: the capacity is at least this)"
    elif rec["boundary"] is not None:
        text += (f"; the SLOs stop holding near {rec['boundary']:.4g} {unit} "
                 f"({rec['confidence']:.0%} interval {lo:.4g}–{hi:.4g})")
    if status == "max_probes":
        text += f"; stopped after {len(rec['probes'])} probes before the bracket reached the tolerance"
    if status == "interrupted":
        text += "; the search was interrupted, so this is what the probes so far show"
    if rec["client_saturated"]:
        text += (f". WARNING: the client's event loop lagged (p99 {rec['client_loop_lag_p99_ms']:.1f} ms) at the "
                 "answer: the client, not the server, may be the bottleneck; rerun with a faster client machine")
    return text


def run_search(
    cfg: RunConfig,
    spec: SearchSpec,
    *,
    console: Console,
    progress_console: Console | None = None,
    name: str | None = None,
) -> SearchOutcome:
    """Pre-flight, prompts, probes until :func:`~loadgen.search.method.next_load` says stop, then the record.

    ``cfg.schedule.duration_s`` is every probe's length and ``cfg.schedule.warmup_s`` the part of it
    left out. A stop signal ends the probe in flight (its files are written), then
    the record of what was measured, then :class:`~loadgen.interrupts.Interrupted`.
    """

    if cfg.schedule.duration_s is None:
        raise PreflightError("a capacity search needs time-based probes: give --duration SECONDS")
    started = time.monotonic()
    pre = preflight(cfg)
    prompts = list(build_prompts(cfg, pre))
    if not prompts:
        raise PreflightError("the workload produced no prompts; check --dataset-name/--dataset-path and the length filters")
    verify_prompts(cfg, pre, prompts, console)
    stem = safe_filename_part(name or cfg.output.label or "capacity")
    date = time.strftime("%Y%m%d-%H%M%S")
    probes: list[Probe] = []
    path = pre.output_dir / f"{stem}.capacity.json"
    console.print(
        f"loadgen search: {cfg.target.backend} {pre.model} at {cfg.target.base_url}; over {spec.over} from "
        f"{spec.start:g} {load_unit(spec.over, cfg.workload.dataset == 'sessions')}; "
        f"SLOs {', '.join(s.text for s in spec.slos)}; probes of {cfg.schedule.duration_s:g} s "
        f"({cfg.schedule.warmup_s:g} s warm-up left out)", highlight=False, soft_wrap=True)

    def finish(interrupted: bool = False, lost: Probe | None = None) -> SearchOutcome:
        est = estimate(spec, probes, seed=cfg.seed)
        rec = record(cfg, spec, est, probes, model=pre.model, server=pre.server, server_version=pre.server_version,
                     started=started, interrupted=interrupted, lost=lost)
        import orjson

        atomic_write(path, orjson.dumps(rec, option=orjson.OPT_INDENT_2))
        console.print(describe(rec), highlight=False, soft_wrap=True)
        console.print(f"capacity record: {path}", highlight=False, soft_wrap=True)
        return SearchOutcome(rec, path, est, probes)

    try:
        while (load := next_load(spec, probes)) is not None:
            index = len(probes) + 1
            pcfg = probe_config(cfg, spec, load, index, stem)
            conc, rate = pcfg.schedule.concurrencies[0], pcfg.schedule.rates[0]
            seq = Cycled(prompts, probe_requests(spec, load, cfg.schedule.duration_s))
            repeat = sum(1 for p in probes if p.load == load) + 1  # a fresh arrival seed per repeat
            t0 = time.monotonic()
            result = run_point(pcfg, pre, seq, conc, rate, date, console=_quiet(console),
                               progress_console=progress_console, repeat=repeat)
            files = point_paths(pcfg, pre, conc, rate, date, repeat)
            rows = read_requests(files.store.requests)
            probe = evaluate(rows, spec, load)
            probe.client_saturated = bool(result.get("client_saturated"))
            probe.loop_lag_p99_ms = result.get("loop_lag_p99_ms")
            probe.file = files.result.name
            probe.seconds = time.monotonic() - t0
            if server_gone(rows):
                finish(lost=probe)
                raise ServerLost(f"the server at {cfg.target.base_url} stopped answering during probe {index}")
            probes.append(probe)
            verdict = "pass" if probe.passed else "FAIL: " + "; ".join(probe.failures)
            figs = ", ".join(f"{k} {v:,.1f}" for k, v in probe.figures.items() if k.count(":") == 1)
            console.print(f"probe {index:>2}: {spec.over} {load:g} — {probe.requests} steady requests; {figs}; {verdict}"
                          + (" (client saturated)" if probe.client_saturated else ""), highlight=False, soft_wrap=True)
    except interrupts.Interrupted:
        finish(interrupted=True)
        raise
    return finish()


def _quiet(console: Console) -> Console:
    """Probes print one line each (above), not the full per-point summary."""
    return Console(quiet=True)
