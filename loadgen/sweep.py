"""Run a configuration: pre-flight checks, prompts, then every load point in order.

Everything that can fail cheaply is checked before the first prompt is built:
options (:mod:`loadgen.config`), the output folder, the server (reachable, which
model, streaming really is SSE), the tokenizer. Each failure is a
:class:`PreflightError` with one line naming the problem and the fix.

Per point: timeline (:mod:`loadgen.schedule`) → runner → metrics → three files
(result JSON, HDR interval log, optional per-request JSONL) → summary.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from loadgen import control, interrupts, prefix_cache
from loadgen import results as results_mod
from loadgen.aggregate import Aggregate
from loadgen.collect import PointCollector
from loadgen.config import RunConfig, rate_label
from loadgen.errors import LoadgenError, is_transient
from loadgen.metrics import SATURATION_LAG_P99_MS
from loadgen.progress import Progress, print_summary, sweep_table
from loadgen.records import Prompt
from loadgen.schedule import ArrivalSpec, release_offsets
from loadgen.store import RequestStore, StoreFiles, read_requests


class PreflightError(LoadgenError, RuntimeError):
    """A check before the run failed; the message is one line with the fix."""

    kind = "preflight"


@dataclass
class Preflight:
    """What the checks learnt about the server and the client side."""

    model: str
    tokenizer_id: str
    server_version: str | None
    output_dir: Path
    max_model_len: int | None = None
    verification: dict[str, Any] | None = None  # set by verify_prompts
    server: dict[str, Any] | None = None  # what /version states beyond the version (sim: time_scale)
    local_check: dict[str, Any] | None = None  # the set's re-count by the tokenizer, when built before the run
    recount: Any = None  # loadgen.workload.recount.Recount of a set built without its tokenizer
    cache_salt: str | None = None  # this run's --cache-salt
    cache_reset: dict[str, Any] | None = None  # the last --reset-prefix-cache outcome (loadgen.prefix_cache.reset)
    trace: Any = None  # loadgen.workload.trace_prompts.TraceSet of a trace replay: its release times
    warm_prompts: list[Prompt] | None = None  # --warmup's own prompts (a random set: built beside the measured ones)
    trace_file: Any = None  # loadgen.workload.traces.Trace, read and checked before the server is asked anything

    def point_verification(self) -> dict[str, Any] | None:
        """The prompt checks a point's result records: the server's (``verify_prompts``)
        and the tokenizer's re-count of a built set (``local``) — done before the run, or
        beside it and waited for now (the point's clock has stopped)."""
        local = self.recount.verdict().as_dict() if self.recount is not None else self.local_check
        if local is None:
            return self.verification
        return {**(self.verification or {}), "local": local}

    def check_recount(self) -> None:
        """After a point is written: stop the sweep if the background re-count disagreed."""
        if self.recount is not None and self.recount.verdict().mismatched:
            raise PreflightError(self.recount.verdict().message())


# ---------------------------------------------------------------- control-path HTTP


def server_version(cfg: RunConfig) -> str | None:
    """``/version`` (vLLM, SGLang) when it answers; recorded in the result, never required."""
    return server_facts(cfg)[0]


def server_facts(cfg: RunConfig) -> tuple[str | None, dict[str, Any]]:
    """``/version``'s version string and the other facts it states (sim: engine, profile,
    ``time_scale``), which the result keeps in its ``server`` section."""
    try:
        resp = control.request(f"{cfg.target.base_url}/version", api_key=cfg.target.api_key, timeout_s=3.0, read_limit=65536,
                               connection=cfg.connection())
    except control.ControlError:
        return None, {}
    if resp.status != 200:
        return None, {}
    try:
        obj = json.loads(resp.body)
    except ValueError:
        return resp.body[:100].decode("utf-8", "replace").strip() or None, {}
    if not isinstance(obj, dict):
        return str(obj), {}
    facts = {k: v for k, v in obj.items() if k != "version" and isinstance(v, str | int | float | bool)}
    return str(obj.get("version", obj)), facts


def probe_stream(cfg: RunConfig, model: str, salt: str | None = None) -> None:
    """One tiny real streaming request; fails now if the answer is not an SSE stream."""
    from loadgen.client import ClientError, check_stream

    prompt = (
        Prompt(id=-1, input_len=1, output_len=2, messages=[{"role": "user", "content": "hello"}])
        if cfg.chat else Prompt(id=-1, input_len=1, output_len=2, text="hello")
    )
    # A server that fails a few requests on purpose (or by load) should not stop a
    # benchmark from starting: transient kinds get two more tries, the rest fail now.
    for attempt in range(3):
        try:
            check_stream(_target(cfg, model, salt), prompt)
            return
        except ClientError as exc:
            if not is_transient(exc.kind) or attempt == 2:
                raise PreflightError(str(exc)) from None
            time.sleep(0.2 * (attempt + 1))


def _target(cfg: RunConfig, model: str, salt: str | None = None) -> Any:
    from loadgen.runner import Target

    t = cfg.target
    extra_body = t.body_extra()
    if salt and t.salt_mode == "body":
        extra_body = {"cache_salt": salt, **(extra_body or {})}
    return Target(
        base_url=t.base_url,
        backend=t.backend,
        model=model,
        endpoint=t.endpoint,
        api_key=t.api_key,
        ignore_eos=cfg.effective_ignore_eos,
        extra_body=extra_body,
        timeout_s=t.timeout_s,
        save_text=cfg.output.save_text,
        connection=t.connection(),
    )


# ---------------------------------------------------------------- pre-flight


def check_files(cfg: RunConfig) -> None:
    """The files the options name exist and load (before anything is created)."""
    from loadgen.workload.cache import readable_source

    path = cfg.workload.dataset_path
    if path and not readable_source(path):
        raise PreflightError(f"--dataset-path '{path}' is not a readable file or pipe; check the path")
    if path and not os.access(path, os.R_OK):
        raise PreflightError(f"--dataset-path '{path}' is not readable; check its permissions")
    ca_cert = cfg.target.ca_cert
    if ca_cert:
        try:
            ssl.create_default_context(cafile=ca_cert)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise PreflightError(f"--ca-cert '{ca_cert}' is not a readable PEM CA bundle ({reason})") from None


def preflight(cfg: RunConfig) -> Preflight:
    """Every cheap check, in order of cost, before any prompt is built."""
    check_files(cfg)
    trace_file = read_trace_file(cfg)
    try:
        out_dir = results_mod.check_writable(cfg.output.output_dir)
    except PermissionError as exc:
        raise PreflightError(str(exc)) from None

    try:
        served = control.models(cfg.target.base_url, cfg.target.api_key, timeout_s=min(cfg.target.timeout_s, 10.0),
                                connection=cfg.connection())
    except control.ControlError as exc:
        if cfg.target.model is None or exc.kind in ("tls", "connect", "timeout"):
            hint = " (or pass --model NAME)" if exc.kind in ("http", "not_json") else ""
            raise PreflightError(f"{exc}{hint}") from None
        served = []  # a server without /v1/models (SGLang native): the stream probe decides
    names = [m.id for m in served]
    model = cfg.target.model
    if model is None:
        if not names:
            raise PreflightError(f"{cfg.target.base_url}/v1/models lists no model; pass --model NAME")
        model = names[0]
    elif names and model not in names:
        raise PreflightError(f"the server does not serve model '{model}' (it has: {', '.join(names[:5])}); fix --model")
    max_model_len = next((m.max_model_len for m in served if m.id == model), None)
    if cfg.workload.dataset == "random":
        check_context(cfg.max_input_len(), cfg.max_output_len(), max_model_len, model)

    tokenizer_id = cfg.target.tokenizer
    if tokenizer_id is None:
        if Path(model).expanduser().is_dir():
            tokenizer_id = model
        else:
            raise PreflightError(
                f"model '{model}' is not a local folder, so its tokenizer cannot be found offline; "
                "pass --tokenizer PATH (a folder with tokenizer.json) or --tokenizer deepseek-r1"
            )
    from loadgen.workload.tokenizer import TokenizerError, resolve_tokenizer_path

    try:
        resolve_tokenizer_path(tokenizer_id)  # found now; loaded only if the prompt set is not cached
    except TokenizerError as exc:
        raise PreflightError(str(exc)) from None

    from loadgen.prefix_cache import run_salt

    salt = run_salt(cfg.target.cache_salt)
    probe_stream(cfg, model, salt if cfg.target.salt_mode == "body" else None)
    version, facts = server_facts(cfg)
    return Preflight(
        model=model,
        tokenizer_id=tokenizer_id,
        server_version=version,
        output_dir=out_dir,
        max_model_len=max_model_len,
        server=facts or None,
        cache_salt=salt,
        trace_file=trace_file,
    )


def read_trace_file(cfg: RunConfig) -> Any:
    """A trace dataset's file, read whole and checked before anything is sent (None for other datasets)."""
    if not cfg.workload.is_trace:
        return None
    from loadgen.workload.errors import WorkloadError
    from loadgen.workload.traces import read_trace

    try:
        return read_trace(cfg.workload.dataset_path or "", cfg.workload.dataset, cfg.workload.block_size)
    except WorkloadError as exc:
        raise PreflightError(str(exc)) from None


def check_context(max_input: int, max_output: int, max_model_len: int | None, model: str) -> None:
    """Fail before any work when no request could fit the server's context window.

    vLLM rejects every request whose prompt plus ``max_tokens`` exceeds the model's
    ``max_model_len`` (HTTP 400): a run that can only fail is not worth starting.
    """
    if max_model_len is None or max_input + max_output <= max_model_len:
        return
    if max_input >= max_model_len:
        raise PreflightError(
            f"prompts of up to {max_input} tokens do not fit {model}'s context of {max_model_len} tokens "
            f"(the server's max_model_len): lower --input-len, or restart the server with a larger --max-model-len")
    raise PreflightError(
        f"{max_input} prompt + {max_output} output tokens exceed {model}'s context of {max_model_len} tokens "
        f"(the server's max_model_len): lower --output-len to at most {max_model_len - max_input} or --input-len, "
        "or restart the server with a larger --max-model-len")


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
    offsets: Any  # numpy array of release offsets, seconds
    target: Any  # loadgen.client.Target
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
    return PointSetup(files, offsets, _target(cfg, pre.model, pre.cache_salt), title)


def point_telemetry(cfg: RunConfig, files: PointFiles, counters: Any, console: Console) -> Any:
    """The point's server/GPU telemetry (a context manager around the run), notes to ``console``."""
    from loadgen.telemetry import PointTelemetry

    return PointTelemetry(cfg, files.result, counters,
                          note=lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True))


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
    ``--ray-address`` the point runs over several clients (:mod:`loadgen.workers`).

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
                from loadgen.workers import run_point_workers

                result = run_point_workers(cfg, pre, prompts, concurrency, rate, date, console=console,
                                           progress_console=progress_console, repeat=repeat)
            else:
                result = _run_point_here(cfg, pre, prompts, concurrency, rate, date, console=console,
                                         progress_console=progress_console, repeat=repeat)
    except interrupts.Interrupted as exc:
        if result is not None:
            exc.results.append(result)
        raise
    pre.check_recount()
    return result


def reset_cache(cfg: RunConfig, console: Console) -> dict[str, Any]:
    """``--reset-prefix-cache`` before a point: the outcome is recorded, a failure is one line."""
    outcome = prefix_cache.reset(cfg.target.base_url, api_key=cfg.target.api_key, connection=cfg.connection(),
                                 timeout_s=min(prefix_cache.RESET_TIMEOUT_S, cfg.target.timeout_s))
    if not outcome["ok"]:
        console.print(f"note: {outcome['message']}", markup=False, highlight=False, soft_wrap=True)
    return outcome


def _run_point_here(
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
    from loadgen.runner import LiveCounters, run

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


def store_cache_figures(cfg: RunConfig, trace: Any, store_path: Path) -> dict[str, Any]:
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
    return {"windows": prefix_cache.by_window(rows, trace.prompts.rows, trace.times_s)}


def build_trace(cfg: RunConfig, pre: Preflight) -> Sequence[Prompt]:
    """A trace replay's prompts (built as they are released) and, in ``pre.trace``, its timeline."""
    from loadgen import workload
    from loadgen.workload.errors import WorkloadError

    spec = cfg.workload.spec(num_prompts=cfg.workload.num_prompts or 1, chat=cfg.chat, seed=cfg.seed,
                             tokenizer=pre.tokenizer_id)
    try:
        pre.trace = workload.build_trace(spec, cfg.workload.replay(), max_model_len=pre.max_model_len,
                                         trace=pre.trace_file)
    except WorkloadError as exc:
        raise PreflightError(str(exc)) from None
    pre.local_check = {"checked": workload.last_build.checked, "ok": True, "background": False}
    if cfg.target.salt_mode == "prefix" and pre.cache_salt:
        from loadgen.workload.salt import PieceSalt

        pre.trace.prompts.salt = PieceSalt(pre.trace.prompts.blocks.table.texts.tolist(), pre.cache_salt)
    return pre.trace.prompts


def build_prompts(cfg: RunConfig, pre: Preflight) -> Sequence[Prompt]:
    """The prompt set shared by every point (built once, before the clock starts)."""
    if cfg.workload.is_trace:
        return build_trace(cfg, pre)
    from loadgen import budget, workload
    problem = budget.too_many_prompts(cfg.prompts_needed(), cfg.max_input_len(), budget.available_bytes())
    if problem is not None:
        raise PreflightError(problem)
    # A random set is built with --warmup's prompts beside the measured ones, so that the warm-up fills
    # no prefix cache the measured requests then hit (a dataset's rows are all used as measured prompts).
    needed = cfg.prompts_needed()
    warm = cfg.schedule.warmup if cfg.workload.dataset == "random" else 0
    spec = cfg.workload.spec(num_prompts=needed + warm, chat=cfg.chat, seed=cfg.seed,
                             tokenizer=pre.tokenizer_id)
    from loadgen.workload.errors import WorkloadError

    try:
        prompts = list(workload.build_prompts(spec, defer_check=True))
    except WorkloadError as exc:
        raise PreflightError(str(exc)) from None
    built = workload.last_build
    if cfg.target.salt_mode == "prefix" and pre.cache_salt:
        prompts = salted(prompts, pre, built.fingerprint)
    if built.deferred:
        from loadgen.workload.recount import Recount

        pre.recount = Recount(pre.tokenizer_id, prompts, fingerprint=built.fingerprint, cache_file=built.cache_file)
    elif built.checked:
        pre.local_check = {"checked": built.checked, "ok": True, "background": False}
    if prompts and pre.max_model_len is not None:
        longest = max(prompts, key=lambda p: p.input_len + p.output_len)
        check_context(longest.input_len, longest.output_len, pre.max_model_len, pre.model)
    if warm and len(prompts) > needed:
        pre.warm_prompts, prompts = prompts[needed:], prompts[:needed]
    return prompts


def salted(prompts: list[Prompt], pre: Preflight, fingerprint: str | None) -> list[Prompt]:
    """``--cache-salt-mode prefix``: a random set with its leading pieces salted (same lengths)."""
    from loadgen.workload import pieces
    from loadgen.workload.errors import WorkloadError
    from loadgen.workload.salt import PieceSalt, salt_prompts
    from loadgen.workload.tokenizer import TokenizerError, load_tokenizer

    found = pieces.cached(fingerprint) if fingerprint else None
    table: pieces.PieceTable | None = None
    try:
        if found is not None:
            table = found[0]
        else:  # the table is not on disk (a set built in this process): the tokenizer has it
            from loadgen.workload.fit import view_of

            table = view_of(load_tokenizer(pre.tokenizer_id)).pieces
        if table is None:
            raise WorkloadError("--cache-salt-mode prefix needs prompts built from the tokenizer's pieces, and this "
                                "tokenizer has no piece table; use --cache-salt-mode body (vLLM) or --reset-prefix-cache")
        return salt_prompts(prompts, PieceSalt(table.texts.tolist(), pre.cache_salt or ""))
    except (WorkloadError, TokenizerError) as exc:
        raise PreflightError(str(exc)) from None


def verify_prompts(cfg: RunConfig, pre: Preflight, prompts: Sequence[Prompt], console: Console) -> None:
    """Let the server count a sample of the prompts (``/tokenize``) before any load.

    A disagreement stops the run: every figure per input token would be wrong. A
    server without ``/tokenize`` is fine unless ``--verify-prompts`` was asked for.
    """
    if cfg.workload.verify_prompts is False:
        return
    from loadgen.workload import verify_with_server

    res = verify_with_server(cfg.target.base_url, pre.model, prompts, api_key=cfg.target.api_key, timeout_s=min(cfg.target.timeout_s, 30.0),
                             connection=cfg.connection())
    pre.verification = {"supported": res.supported, "ok": res.ok, "checked": res.checked,
                        "max_diff": res.max_diff, "message": res.message}
    if not res.supported:
        if cfg.workload.verify_prompts:
            raise PreflightError(f"{res.message}; --verify-prompts needs it: use --no-verify-prompts")
        console.print(f"note: {res.message}", highlight=False, soft_wrap=True)
        return
    if not res.ok:
        raise PreflightError(f"{res.message} (or pass --no-verify-prompts to run anyway)")
    console.print(f"prompts verified: {res.message}", highlight=False, soft_wrap=True)


def repeats_done(cfg: RunConfig, runs: list[dict[str, Any]], console: Console) -> bool:
    """--repeat auto: say where the point's intervals stand; True once they are narrow enough."""
    from loadgen import convergence

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

