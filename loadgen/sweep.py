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
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from loadgen import metrics as metrics_mod
from loadgen import results as results_mod
from loadgen.config import RunConfig, rate_label
from loadgen.progress import Progress, print_summary, sweep_table
from loadgen.records import Prompt, RequestRecord
from loadgen.schedule import ArrivalSpec, release_offsets


class PreflightError(RuntimeError):
    """A check before the run failed; the message is one line with the fix."""


@dataclass
class Preflight:
    """What the checks learnt about the server and the client side."""

    model: str
    tokenizer_id: str
    tokenizer: Any
    server_version: str | None
    output_dir: Path
    verification: dict[str, Any] | None = None  # set by verify_prompts


# ---------------------------------------------------------------- control-path HTTP

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # like aiohttp: no env proxies


def _get(url: str, *, api_key: str | None, timeout: float, read_limit: int = 65536) -> tuple[int, str, bytes]:
    """(status, content type, first bytes of the body). Raises OSError for network failures."""
    headers = {"Accept": "*/*"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read(read_limit)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", "") if exc.headers else "", exc.read(4096)


def server_version(cfg: RunConfig) -> str | None:
    """``/version`` (vLLM, SGLang) when it answers; recorded in the result, never required."""
    try:
        status, _, data = _get(f"{cfg.base_url}/version", api_key=cfg.api_key, timeout=3.0)
    except (OSError, ValueError):
        return None
    if status != 200:
        return None
    try:
        obj = json.loads(data)
        return str(obj.get("version", obj)) if isinstance(obj, dict) else str(obj)
    except ValueError:
        return data[:100].decode("utf-8", "replace").strip() or None


def probe_stream(cfg: RunConfig, model: str) -> None:
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
            check_stream(_target(cfg, model), prompt)
            return
        except ClientError as exc:
            transient = any(k in str(exc) for k in ("(http_5", "(http_429", "(reset", "(timeout", "(malformed"))
            if not transient or attempt == 2:
                raise PreflightError(str(exc)) from None
            time.sleep(0.2 * (attempt + 1))


def _target(cfg: RunConfig, model: str) -> Any:
    from loadgen.runner import Target

    return Target(
        base_url=cfg.base_url,
        backend=cfg.backend,
        model=model,
        endpoint=cfg.endpoint,
        api_key=cfg.api_key,
        ignore_eos=cfg.effective_ignore_eos,
        extra_body=cfg.extra_body,
        timeout_s=cfg.timeout_s,
        save_text=cfg.save_text,
    )


# ---------------------------------------------------------------- pre-flight


def preflight(cfg: RunConfig) -> Preflight:
    """Every cheap check, in order of cost, before any prompt is built."""
    try:
        out_dir = results_mod.check_writable(cfg.output_dir)
    except PermissionError as exc:
        raise PreflightError(str(exc)) from None

    from loadgen.client import ClientError, probe

    try:
        models = probe(cfg.base_url, cfg.api_key, timeout_s=min(cfg.timeout_s, 10.0))
    except ClientError as exc:
        if cfg.model is None:
            hint = " (or pass --model NAME)" if "answered HTTP" in str(exc) else ""
            raise PreflightError(f"{exc}{hint}") from None
        models = []  # a server without /v1/models (SGLang native): the stream probe decides
    model = cfg.model
    if model is None:
        if not models:
            raise PreflightError(f"{cfg.base_url}/v1/models lists no model; pass --model NAME")
        model = models[0]
    elif models and model not in models:
        raise PreflightError(f"the server does not serve model '{model}' (it has: {', '.join(models[:5])}); fix --model")

    tokenizer_id = cfg.tokenizer
    if tokenizer_id is None:
        if Path(model).expanduser().is_dir():
            tokenizer_id = model
        else:
            raise PreflightError(
                f"model '{model}' is not a local folder, so its tokenizer cannot be found offline; "
                "pass --tokenizer PATH (a folder with tokenizer.json) or --tokenizer deepseek-r1"
            )
    from loadgen.workload.tokenizer import TokenizerError, load_tokenizer

    try:
        tokenizer = load_tokenizer(tokenizer_id)
    except TokenizerError as exc:
        raise PreflightError(str(exc)) from None

    probe_stream(cfg, model)
    return Preflight(
        model=model,
        tokenizer_id=tokenizer_id,
        tokenizer=tokenizer,
        server_version=server_version(cfg),
        output_dir=out_dir,
    )


# ---------------------------------------------------------------- one point


@dataclass
class PointFiles:
    result: Path
    hlog: Path
    requests: Path | None


def point_paths(cfg: RunConfig, pre: Preflight, concurrency: int | None, rate: float, date: str) -> PointFiles:
    name = results_mod.render_filename(cfg.result_filename, cfg, concurrency, rate, pre.model, date)
    path = pre.output_dir / name
    return PointFiles(
        result=path,
        hlog=results_mod.sibling(path, ".hlog"),
        requests=results_mod.sibling(path, ".requests.jsonl") if cfg.save_requests else None,
    )


def finish_point(
    cfg: RunConfig,
    info: results_mod.PointInfo,
    records: Sequence[RequestRecord],
    start_ns: int,
    end_ns: int,
    lag_samples_ns: Sequence[int],
    files: PointFiles,
    *,
    server_version: str | None = None,
    warmup_records: Sequence[RequestRecord] = (),
    verification: dict[str, Any] | None = None,
    telemetry: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Records of one point → figures → the three files. No network; testable on its own."""
    measured = [r for r in records if not r.warmup]
    fig = metrics_mod.per_request(measured)
    summary = metrics_mod.summarize(
        measured, start_ns, end_ns,
        # p95/p99 are always computed: vLLM and SGLang readers expect p99_*_ms and p95_itl_ms
        percentiles=sorted(set(cfg.percentiles) | {95.0, 99.0}),
        goodput_slos_ms=cfg.goodput_slos_ms or None,
        lag_samples_ns=lag_samples_ns,
        figures=fig,
    )
    hists = results_mod.histograms(fig)
    extra: dict[str, Any] = {
        "files": {"hlog": files.hlog.name, "requests": files.requests.name if files.requests else None},
    }
    if verification is not None:
        extra["prompt_verification"] = verification
    extra.update(telemetry or {})  # server_metrics, gpu_metrics (loadgen.telemetry)
    result = results_mod.build_result(
        cfg, info, summary, fig, measured, hists, server_version=server_version, extra=extra
    )
    results_mod.write_hlog(files.hlog, hists, info, cfg)
    if files.requests is not None:
        rows = results_mod.request_rows([*warmup_records, *records], start_ns, cfg.save_text)
        results_mod.write_requests(files.requests, rows)
    results_mod.write_result(files.result, result)
    return result


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
) -> dict[str, Any]:
    """Run one (concurrency, rate) point against the server and write its files."""
    from loadgen.runner import LiveCounters, run
    from loadgen.telemetry import PointTelemetry

    files = point_paths(cfg, pre, concurrency, rate, date)
    offsets = release_offsets(len(prompts), ArrivalSpec(rate, cfg.arrival, cfg.burstiness), seed=cfg.seed)
    target = _target(cfg, pre.model)
    counters = LiveCounters(0, 0, 0, 0, 0)
    title = f"c={concurrency if concurrency is not None else 'unl.'} rate={rate_label(rate)}"
    start_epoch = time.time()
    telemetry = PointTelemetry(cfg, files.result, counters,
                               note=lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True))
    with telemetry, Progress(counters, len(prompts), title, console=progress_console, enabled=cfg.progress) as prog:
        outcome = run(
            target,
            list(prompts),
            offsets.tolist(),
            concurrency=concurrency,
            warmup=cfg.warmup,
            duration_s=cfg.duration_s,
            counters=counters,
            on_tick=prog.tick,
            grace_s=cfg.grace_s,
        )
    span_s = max(outcome.end_ns - outcome.start_ns, 0) / 1e9
    end_epoch = start_epoch + span_s
    info = results_mod.PointInfo(
        concurrency=concurrency,
        rate=rate,
        date=date,
        model=pre.model,
        tokenizer_id=pre.tokenizer_id,
        start_epoch_s=start_epoch,
        end_epoch_s=end_epoch,
        partial=bool(outcome.partial),
        warmup_requests=len(outcome.warmup_records or ()),
    )
    result = finish_point(
        cfg, info, outcome.records, outcome.start_ns, outcome.end_ns, outcome.lag_samples_ns, files,
        server_version=pre.server_version, warmup_records=outcome.warmup_records or (),
        verification=pre.verification,
        telemetry=telemetry.result_keys(outcome.start_ns, outcome.end_ns, start_epoch),
    )
    print_summary(result, console, str(files.result))
    return result


# ---------------------------------------------------------------- the whole run


def build_prompts(cfg: RunConfig, pre: Preflight) -> list[Prompt]:
    """The prompt set shared by every point (built once, before the clock starts)."""
    from loadgen import workload
    from loadgen.workload.spec import WorkloadSpec

    spec = WorkloadSpec(
        dataset=cfg.dataset,
        num_prompts=cfg.prompts_needed(),
        input_len=cfg.input_len,
        output_len=cfg.output_len,
        range_ratio=cfg.range_ratio,
        dataset_path=cfg.dataset_path,
        prefix_len=cfg.prefix_len,
        num_prefixes=cfg.num_prefixes,
        chat=cfg.chat,
        input_len_counts=cfg.input_len_counts,
        seed=cfg.seed,
        tokenizer=pre.tokenizer_id,
    )
    from loadgen.workload.errors import WorkloadError

    try:
        return list(workload.build_prompts(spec, pre.tokenizer))
    except WorkloadError as exc:
        raise PreflightError(str(exc)) from None


def verify_prompts(cfg: RunConfig, pre: Preflight, prompts: Sequence[Prompt], console: Console) -> None:
    """Let the server count a sample of the prompts (``/tokenize``) before any load.

    A disagreement stops the run: every figure per input token would be wrong. A
    server without ``/tokenize`` is fine unless ``--verify-prompts`` was asked for.
    """
    if cfg.verify_prompts is False:
        return
    from loadgen.workload import verify_with_server

    res = verify_with_server(cfg.base_url, pre.model, prompts, api_key=cfg.api_key, timeout_s=min(cfg.timeout_s, 30.0))
    pre.verification = {"supported": res.supported, "ok": res.ok, "checked": res.checked,
                        "max_diff": res.max_diff, "message": res.message}
    if not res.supported:
        if cfg.verify_prompts:
            raise PreflightError(f"{res.message}; --verify-prompts needs it: use --no-verify-prompts")
        console.print(f"note: {res.message}", highlight=False, soft_wrap=True)
        return
    if not res.ok:
        raise PreflightError(f"{res.message} (or pass --no-verify-prompts to run anyway)")
    console.print(f"prompts verified: {res.message}", highlight=False, soft_wrap=True)


def run_all(
    cfg: RunConfig,
    *,
    console: Console,
    progress_console: Console | None = None,
    prompt_source: Callable[[RunConfig, Preflight], Sequence[Prompt]] | None = None,
) -> list[dict[str, Any]]:
    """Pre-flight, prompts, then every point in order; stops after an interrupted point."""
    pre = preflight(cfg)
    prompts = list((prompt_source or build_prompts)(cfg, pre))
    if not prompts:
        raise PreflightError("the workload produced no prompts; check --dataset-name/--dataset-path and the length filters")
    verify_prompts(cfg, pre, prompts, console)
    date = time.strftime("%Y%m%d-%H%M%S")
    names = [point_paths(cfg, pre, c, r, date).result for c, r in cfg.points()]
    if len(set(names)) != len(names):
        raise PreflightError("--result-filename gives two points the same file; add {concurrency} and {rate} to it")
    console.print(
        f"loadgen: {cfg.backend} {pre.model} at {cfg.base_url}; {len(prompts)} prompts; "
        f"{len(cfg.points())} point(s); ignore_eos={cfg.effective_ignore_eos}",
        highlight=False, soft_wrap=True,
    )
    out: list[dict[str, Any]] = []
    for concurrency, rate in cfg.points():
        result = run_point(cfg, pre, prompts, concurrency, rate, date, console=console, progress_console=progress_console)
        out.append(result)
        if result.get("partial"):
            break
    if len(out) > 1:
        console.print(sweep_table(out))
    return out

