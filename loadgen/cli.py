"""The ``loadgen`` command: options → :class:`~loadgen.config.RunConfig` → :func:`~loadgen.sweep.run_all`.

Option names follow vLLM's ``benchmark_serving.py`` and SGLang's ``bench_serving``
where they exist (their spellings are accepted as aliases), so a command line from
either tool mostly works unchanged. Any bad option or failed pre-flight check ends
in one line on stderr and exit code 2; nothing runs before the checks pass.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from loadgen import __version__, interrupts, peer_flags
from loadgen.aggregate import DEFAULT_INLINE_LIMIT
from loadgen.cli_errors import OneLineErrors
from loadgen.config import (
    DEFAULT_RESULT_FILENAME,
    ConfigError,
    RunConfig,
    base_url_from,
    parse_chat_template_kwargs,
    parse_concurrencies,
    parse_extra_body,
    parse_goodput,
    parse_metadata,
    parse_percentiles,
    parse_rates,
)
from loadgen.connection import INSECURE_WARNING
from loadgen.protocols import BACKENDS
from loadgen.schedule import ARRIVALS
from loadgen.workload.spec import DATASETS

# Exit codes (docs/loadgen.md): 0 done; 2 bad option or failed pre-flight check;
# 3 a point in which no request succeeded (its result file is written); 128 + N stopped
# by signal N (130 Ctrl-C, 143 SIGTERM) after writing every point that ran.
EXIT_NOTHING_MEASURED = 3

# Options that take several space-separated values, as in vLLM (argparse nargs="+").
_MULTI_VALUE = ("--goodput", "--metadata")


def normalize_argv(args: list[str]) -> list[str]:
    """``--goodput ttft:500 tpot:50`` → ``--goodput ttft:500 --goodput tpot:50`` (click repeats options)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        out.append(arg)
        i += 1
        if arg in _MULTI_VALUE:
            first = True
            while i < len(args) and not args[i].startswith("-"):
                if not first:
                    out.append(arg)
                out.append(args[i])
                first = False
                i += 1
    return out


class LoadgenCommand(OneLineErrors, click.Command):
    """A click command whose errors are one line (no usage block) and exit code 2."""

    prog = "loadgen"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {o for p in self.params if isinstance(p, click.Option) and not p.is_flag for o in p.opts}
        try:  # vLLM's and SGLang's benchmark flags loadgen does not declare (docs/loadgen.md#coming-from-vllm-or-sglang)
            args = peer_flags.translate(list(args), takes_value)
        except peer_flags.PeerFlagError as exc:
            raise click.UsageError(str(exc)) from None
        return super().parse_args(ctx, normalize_argv(args))

    def main(self, args: Any = None, *rest: Any, **extra: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        plugged = plugged_command(args[0]) if args and not args[0].startswith("-") and self.name != "search" else None
        if plugged is not None:
            return plugged.main(args[1:], f"loadgen {args[0]}")
        return super().main(args, *rest, **extra)


def plugged_command(name: str) -> Any:
    """A subcommand registered in the ``loadgen.commands`` entry-point group: ``loadgen compare``
    comes from analysis so (loadgen names no package it must not import), and ``loadgen search``
    too, since the search command builds on this one."""
    from importlib.metadata import entry_points

    found = entry_points(group="loadgen.commands", name=name)
    return next(iter(found)).load() if found else None


def _opt(*names: str, **kw: Any):  # noqa: ANN202 - click decorator
    return click.option(*names, **kw)


@click.command(cls=LoadgenCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="loadgen")
@_opt("--config", "config_file", default=None, metavar="FILE",
      help="Run the configuration saved in FILE: a TOML file, or a loadgen result JSON (its run_config). "
           "Options given on the command line override it.")
# target
@_opt("--base-url", default=None, help="Server root, e.g. http://127.0.0.1:8000 (overrides --host/--port).")
@_opt("--host", default=None, help="Server host when --base-url is not given. [default: 127.0.0.1]")
@_opt("--port", type=int, default=None, help="Server port when --base-url is not given. [default: 8000]")
@_opt("--endpoint", default=None, help="Request path; default from --backend (/v1/completions, /v1/chat/completions, /generate).")
@_opt("--backend", type=click.Choice(BACKENDS), default="openai", show_default=True,
      help="Wire protocol: openai (completions), vllm (openai + vLLM extensions), openai-chat, sglang (native /generate).")
@_opt("--model", default=None, help="Model name sent to the server. [default: first of /v1/models]")
@_opt("--served-model-name", default=None,
      help="vLLM's spelling: the name sent to the server, while --model (a local folder) gives the tokenizer.")
@_opt("--tokenizer", default=None, help="Local tokenizer folder, or 'deepseek-r1' (bundled). [default: --model if it is a local folder]")
@_opt("--api-key", envvar="OPENAI_API_KEY", default=None, show_envvar=True, help="Bearer token for the server.")
@_opt("--ca-cert", default=None, metavar="FILE",
      help="PEM bundle of CA certificates to trust for an https server (e.g. a self-signed one).")
@_opt("--insecure", is_flag=True, default=False,
      help="https without certificate verification (warns on stderr; recorded in the result).")
# workload
@_opt("--dataset-name", "--dataset", "dataset", type=click.Choice(DATASETS), default="random", show_default=True,
      help="Prompt source.")
@_opt("--dataset-path", default=None, help="File for --dataset-name sharegpt, jsonl or a trace (mooncake, azure, burstgpt).")
# trace replay (docs/workloads.md#trace-replay)
@_opt("--block-size", type=int, default=512, show_default=True, help="Trace replay: prompt tokens per Mooncake hash id.")
@_opt("--trace-speedup", type=float, default=1.0, show_default=True,
      help="Trace replay: divide the trace's times by this (2: twice as fast).")
@_opt("--trace-start", "trace_start_s", type=float, default=0.0, show_default=True,
      help="Trace replay: seconds from the trace start where the window begins.")
@_opt("--trace-end", "trace_end_s", type=float, default=None, help="Trace replay: where the window ends (s). [default: the end]")
@_opt("--trace-max-gap", "trace_max_gap_s", type=float, default=None,
      help="Trace replay: cap every idle gap between requests at this many seconds (before the speed-up).")
@_opt("--trace-timing", type=click.Choice(["trace", "order"]), default="trace", show_default=True,
      help="Trace replay: release at the trace's times (open loop), or in its order under --concurrency.")
@_opt("--trace-too-long", type=click.Choice(["skip", "shorten"]), default="skip", show_default=True,
      help="Trace requests longer than the server's context (max_model_len): skip and count them, or shorten them.")
@_opt("--input-len", "--random-input-len", "--random-input", "input_len", type=int, default=1024, show_default=True,
      help="Prompt length in tokens (random prompts).")
@_opt("--output-len", "--random-output-len", "--random-output", "output_len", type=int, default=128, show_default=True,
      help="Output tokens asked per request (max_tokens).")
@_opt("--fixed-output-len", "output_len_fixed", is_flag=True, default=False,
      help="sharegpt/jsonl: ask --output-len of every request instead of the dataset's reply length.")
@_opt("--random-range-ratio", "range_ratio", type=float, default=0.0, show_default=True,
      help="Lengths drawn uniformly from [L*(1-r), L*(1+r)] (vLLM's convention).")
@_opt("--prefix-len", "--random-prefix-len", "prefix_len", type=int, default=0, show_default=True,
      help="Shared-prefix tokens at the start of each prompt.")
@_opt("--num-prefixes", type=int, default=0, show_default=True, help="Distinct shared prefixes (0: one when --prefix-len > 0).")
@_opt("--input-len-counts", type=click.Choice(["total", "content"]), default="total", show_default=True,
      help="Whether --input-len includes the chat template (total) or only the user text (content).")
@_opt("--verify-prompts/--no-verify-prompts", default=None,
      help="Before the run, have the server's /tokenize count a sample of prompts; stop on a disagreement. "
           "[default: when the server has /tokenize]")
@_opt("--num-prompts", type=int, default=None, help="Requests per point. [default: 1000, or rate x --duration]")
# sessions (--dataset-name sessions): each a value or a distribution, e.g. 8, uniform:4:12, lognormal:2:1
@_opt("--session-turns", default="4", show_default=True, help="Sessions: turns per session (value or distribution).")
@_opt("--turn-input-len", default=None, help="Sessions: new user tokens per turn. [default: --input-len]")
@_opt("--turn-output-len", default=None, help="Sessions: output tokens per turn. [default: --output-len]")
@_opt("--system-prompt-len", default="0", show_default=True, help="Sessions: tokens of the system prompt all sessions share.")
@_opt("--think-time", default="0", show_default=True,
      help="Sessions: seconds between a reply's end and the next turn: S, exponential:MEAN, lognormal:MEAN:STD, ...")
@_opt("--history", type=click.Choice(["live", "recorded"]), default="live", show_default=True,
      help="Sessions: earlier turns carry the server's actual replies (live) or replies built beforehand (recorded).")
@_opt("--session-header", default=None, metavar="NAME",
      help="Sessions: send every turn with the header NAME: <session id> (routers keep a conversation on one replica).")
# load shape
@_opt("--duration", "duration_s", type=float, default=None, help="Stop releasing after this many seconds per point.")
@_opt("--rate", "--request-rate", "rate", default="inf", show_default=True,
      help="Requests per second: a number, 'inf', or a comma list for a sweep (1,2,inf).")
@_opt("--arrival", type=click.Choice(ARRIVALS), default="poisson", show_default=True, help="Arrival process for a finite rate.")
@_opt("--burstiness", type=float, default=1.0, show_default=True,
      help="Gamma shape: <1 burstier, >1 smoother than Poisson (!=1 implies --arrival gamma).")
@_opt("--concurrency", "--max-concurrency", "concurrency", default=None,
      help="Max requests in flight: a number or a comma list for a sweep (1,2,4,8). [default: unlimited]")
@_opt("--warmup", "--num-warmups", "warmup", type=int, default=0, show_default=True,
      help="Requests sent before each point's measurement (excluded from the figures).")
@_opt("--warmup-seconds", "warmup_s", type=float, default=0.0, show_default=True,
      help="With --duration: requests released in each point's first W seconds are warm-up "
           "(kept in the per-request store, flagged, left out of every figure).")
@_opt("--repeat", default="1", show_default=True,
      help="Run every point K times (one result file each: {repeat} in --result-filename, else a -repN suffix); "
           "loadgen-report gives confidence intervals across repeats. 'auto': repeat until --repeat-width.")
@_opt("--repeat-width", default=None, metavar="PCT",
      help="--repeat auto: stop once the 95 % interval of the mean of every --repeat-metric is within ±PCT of it. "
           "[default: 5%]")
@_opt("--repeat-metric", "repeat_metrics", multiple=True, metavar="FIGURE",
      help="--repeat auto: a result figure to converge (repeat the option). [default: output_throughput, p99_ttft_ms]")
@_opt("--repeat-max", type=int, default=None, metavar="N", help="--repeat auto: at most N runs. [default: 10]")
@_opt("--seed", type=int, default=0, show_default=True, help="Seed for prompts and arrival times.")
@_opt("--ignore-eos/--no-ignore-eos", default=None,
      help="Ask the server to generate exactly --output-len tokens. [default: on for random prompts, off for datasets]")
@_opt("--extra-body", default=None, help="JSON object merged into every request body, e.g. '{\"temperature\": 0}'.")
@_opt("--reset-prefix-cache", is_flag=True, default=False,
      help="Empty the server's prefix cache before each point (vLLM POST /reset_prefix_cache, SGLang POST "
           "/flush_cache); a refusal or a hang is one line and recorded, the point still runs.")
@_opt("--cache-salt", default=None, metavar="SALT|auto",
      help="Salt every request so no earlier run's prefix cache is reused; 'auto': a new salt per run (recorded).")
@_opt("--cache-salt-mode", type=click.Choice(["body", "prefix"]), default=None,
      help="body: vLLM's cache_salt field; prefix: the prompt's leading pieces, same length (random prompts, "
           "traces). [default: body, prefix for --backend sglang]")
@_opt("--chat-template-kwargs", default=None,
      help="JSON object sent as chat_template_kwargs (--backend openai-chat), e.g. '{\"enable_thinking\": false}' "
           "to turn a reasoning model's thinking off; recorded in the result.")
@_opt("--timeout", "timeout_s", type=float, default=600.0, show_default=True, help="Per-request timeout in seconds.")
# figures and files
@_opt("--goodput", multiple=True, help="SLOs for goodput, vLLM style: --goodput ttft:500 tpot:50 e2el:20000 (ms).")
@_opt("--percentiles", "--metric-percentiles", "percentiles", default="50,90,95,99", show_default=True,
      help="Percentiles to report, comma-separated.")
@_opt("--output-dir", "--result-dir", "output_dir", default="results", show_default=True, help="Folder for result files.")
@_opt("--result-filename", "--output-file", "result_filename", default=DEFAULT_RESULT_FILENAME, show_default=True,
      help="File name template; fields {backend} {model} {concurrency} {rate} {input_len} {output_len} "
           "{num_prompts} {dataset} {label} {date} {seed} {arrival} {repeat}.")
@_opt("--save-requests", is_flag=True, default=False,
      help="Also keep every chunk's arrival and token count (NAME.chunks.npy beside the per-request store).")
@_opt("--max-inline-requests", "inline_requests", type=int, default=DEFAULT_INLINE_LIMIT, show_default=True,
      help="Keep vLLM's per-request arrays (ttfts, itls, ...) in the result JSON up to this many requests; "
           "above, they are only in the per-request store (NAME.requests.npy). 0: never.")
@_opt("--save-text", is_flag=True, default=False, help="Keep generated texts (result 'generated_texts' and JSONL).")
@_opt("--save-result", is_flag=True, default=False, hidden=True, help="Accepted for vLLM compatibility; results are always saved.")
@_opt("--label", default=None, help="A name for this run, stored in results and usable as {label}.")
@_opt("--metadata", multiple=True, help="KEY=VALUE pairs stored in every result: --metadata gpu=H20 tp=8.")
@_opt("--progress/--no-progress", default=True, show_default=True, help="Live progress while running.")
@_opt("--grace", "grace_s", type=float, default=5.0, show_default=True,
      help="Seconds in-flight requests get to finish after Ctrl-C or --duration.")
# telemetry
@_opt("--server-metrics", default=None,
      help="Prometheus URL scraped during each point, or 'off'. [default: the server's /metrics when it has one]")
@_opt("--metrics-interval", "metrics_interval_s", type=float, default=1.0, show_default=True,
      help="Seconds between scrapes of --server-metrics and --gpu-metrics.")
@_opt("--gpu-metrics", default="auto", show_default=True,
      help="GPU telemetry: auto (NVML when loadgen runs on the GPU host), off, or a DCGM exporter URL.")
# scale
@_opt("--workers", type=int, default=None,
      help="Client processes sharing each point's schedule (one uvloop client each; docs/scale.md). "
           "With --ray-address: Ray actors. [default: 1; with --ray-address, one per node]")
@_opt("--ray-address", envvar="RAY_ADDRESS", show_envvar=True, default=None,
      help="Run the workers as Ray actors spread over this Ray cluster ('auto': the one this machine is in). "
           "Needs pip install 'loadgen[ray]'.")
def main(**opts: Any) -> None:
    """Benchmark an OpenAI-compatible or SGLang inference server with streaming requests.

    \b
    Examples:
      loadgen --rate inf --concurrency 256 --tokenizer deepseek-r1
      loadgen --backend openai-chat --concurrency 1,2,4,8,16 --input-len 128 --output-len 128
      loadgen --rate 1,2,4,inf --duration 60 --goodput ttft:500 tpot:50

    vLLM's and SGLang's benchmark flags are understood too (docs/loadgen.md, "Coming from vLLM or SGLang").
    """
    try:
        cfg = config_from_options(opts, explicit_options(click.get_current_context()))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    from rich.console import Console

    if cfg.target.insecure:
        click.echo(INSECURE_WARNING, err=True)
    # piped output (CI logs) gets a fixed, wide layout instead of rich's 80 columns
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    progress_console = Console(stderr=True)
    from loadgen.server_checks import PreflightError  # late: cold start (perf/footprint.py startup)
    from loadgen.sweep import run_all
    from loadgen.workload.errors import WorkloadError

    interrupts.install()
    try:
        results = run_all(cfg, console=console, progress_console=progress_console)
    except (PreflightError, WorkloadError) as exc:  # WorkloadError: e.g. a session run's reply counter did not start
        raise click.UsageError(str(exc)) from None
    except interrupts.Interrupted as exc:
        written = exc.results
        if written:
            partial = " (the last one partial)" if written[-1].get("partial") else ""
            click.echo(f"loadgen: stopped by {exc.name}; {len(written)} point(s) written{partial}", err=True)
        else:
            click.echo(f"loadgen: stopped by {exc.name} before the first point ran; nothing was measured", err=True)
        sys.exit(exc.exit_code)
    empty = [r for r in results if not r.get("completed")]
    if empty:
        click.echo(f"loadgen: error: no request succeeded in {len(empty)} of {len(results)} point(s) "
                   f"({', '.join(f'{k}={v}' for k, v in empty[0].get('errors_by_kind', {}).items())}); "
                   "the result files say why", err=True)
        sys.exit(EXIT_NOTHING_MEASURED)


# flat RunConfig field → the options that set it, where they differ (default: the same name)
_SET_BY = {
    "base_url": ("base_url", "host", "port"),
    "model": ("model", "served_model_name"),
    "tokenizer": ("tokenizer", "served_model_name"),
    "rates": ("rate",),
    "concurrencies": ("concurrency",),
    "goodput_slos_ms": ("goodput",),
    "workers": ("workers", "ray_address"),
    "repeat": ("repeat", "repeat_max"),
    "repeat_width": ("repeat", "repeat_width"),
    "repeat_metrics": ("repeat", "repeat_metrics"),
}


def explicit_options(ctx: click.Context) -> set[str]:
    """The options given on the command line or through their environment variable."""
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return {name for name in ctx.params if ctx.get_parameter_source(name) in given}


def repeat_fields(opts: dict[str, Any]) -> dict[str, Any]:
    """``--repeat K`` or ``--repeat auto`` (with its width, metrics and maximum) → flat fields."""
    from loadgen.convergence import DEFAULT_METRICS, RepeatError, parse_repeat, parse_width

    try:
        count = parse_repeat(opts["repeat"])
        auto = {"repeat_width": opts.get("repeat_width"), "repeat_metrics": opts.get("repeat_metrics"),
                "repeat_max": opts.get("repeat_max")}
        if count is not None:
            given = [f"--{k.replace('_', '-').removesuffix('s')}" for k, v in auto.items() if v]
            if given:
                raise ConfigError(f"{given[0]} applies to --repeat auto only; give --repeat auto or drop it")
            return {"repeat": count, "repeat_width": None, "repeat_metrics": ()}
        return {"repeat": opts.get("repeat_max") or 10, "repeat_width": parse_width(opts.get("repeat_width") or "5%"),
                "repeat_metrics": tuple(opts.get("repeat_metrics") or DEFAULT_METRICS)}
    except RepeatError as exc:
        raise ConfigError(str(exc)) from None


def flat_from_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Click's parsed options → flat RunConfig fields (raises ConfigError)."""
    return dict(
        base_url=base_url_from(opts["base_url"], opts["host"], opts["port"]),
        endpoint=opts["endpoint"],
        backend=opts["backend"],
        # vLLM: --model is the checkpoint folder, --served-model-name the API name
        model=opts["served_model_name"] or opts["model"],
        tokenizer=opts["tokenizer"] or (opts["model"] if opts["served_model_name"] else None),
        api_key=opts["api_key"] or None,
        dataset=opts["dataset"],
        dataset_path=opts["dataset_path"],
        num_prompts=opts["num_prompts"],
        **{k: opts[k] for k in ("session_turns", "turn_input_len", "turn_output_len", "system_prompt_len",
                                "think_time", "history", "session_header")},
        input_len=opts["input_len"],
        output_len=opts["output_len"],
        output_len_fixed=opts.get("output_len_fixed", False),
        range_ratio=opts["range_ratio"],
        prefix_len=opts["prefix_len"],
        num_prefixes=opts["num_prefixes"],
        input_len_counts=opts["input_len_counts"],
        verify_prompts=opts["verify_prompts"],
        **_trace_fields(opts),
        rates=parse_rates(opts["rate"]),
        arrival=opts["arrival"],
        burstiness=opts["burstiness"],
        concurrencies=parse_concurrencies(opts["concurrency"]),
        duration_s=opts["duration_s"],
        warmup=opts["warmup"],
        warmup_s=opts["warmup_s"],
        **repeat_fields(opts),
        seed=opts["seed"],
        ignore_eos=opts["ignore_eos"],
        extra_body=parse_extra_body(opts["extra_body"]),
        reset_prefix_cache=opts.get("reset_prefix_cache", False),
        cache_salt=opts.get("cache_salt"),
        cache_salt_mode=opts.get("cache_salt_mode"),
        chat_template_kwargs=parse_chat_template_kwargs(opts["chat_template_kwargs"]),
        timeout_s=opts["timeout_s"],
        goodput_slos_ms=parse_goodput(opts["goodput"]),
        percentiles=parse_percentiles(opts["percentiles"]),
        output_dir=opts["output_dir"],
        result_filename=opts["result_filename"],
        save_requests=opts["save_requests"],
        save_text=opts["save_text"],
        inline_requests=opts["inline_requests"],
        label=opts["label"],
        metadata=parse_metadata(opts["metadata"]),
        progress=opts["progress"],
        grace_s=opts["grace_s"],
        server_metrics=opts.get("server_metrics"),
        metrics_interval_s=opts.get("metrics_interval_s", 1.0),
        gpu_metrics=opts.get("gpu_metrics") or "auto",
        ca_cert=opts["ca_cert"],
        insecure=opts["insecure"],
        workers=opts["workers"] if opts["workers"] is not None else (0 if opts["ray_address"] else 1),
        ray_address=opts["ray_address"] or None,
    )


def _trace_fields(opts: dict[str, Any]) -> dict[str, Any]:
    """The trace replay options (absent from commands that reuse only loadgen's other options)."""
    names = ("block_size", "trace_speedup", "trace_start_s", "trace_end_s", "trace_max_gap_s", "trace_timing",
             "trace_too_long")
    return {k: opts[k] for k in names if k in opts}


def config_from_options(opts: dict[str, Any], explicit: set[str] | None = None) -> RunConfig:
    """Click's parsed options → a validated configuration (raises ConfigError).

    With ``--config FILE`` the file gives every field, and the options in ``explicit``
    (given on the command line or by environment) override it.
    """
    flat = flat_from_options(opts)
    if opts.get("config_file"):
        from loadgen import config_file

        given = explicit or set()
        saved = config_file.read(opts["config_file"])
        flat = {**saved, **{k: v for k, v in flat.items() if k not in saved or given & set(_SET_BY.get(k, (k,)))}}
    return RunConfig.from_flat(**flat)


if __name__ == "__main__":
    main()
