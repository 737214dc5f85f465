"""Every option of ``loadgen``, declared once: :data:`OPTIONS`.

Each row says what the user types (flag, aliases, type, default, help), which flat
:class:`~loadgen.config.RunConfig` field it gives and how its text becomes that
field's value. Everything else is generated from the rows, so an option cannot be
half-added:

- the click options of ``loadgen`` (and, through them, of ``loadgen search``),
  grouped by :attr:`Option.group` in ``--help``;
- :func:`flat_from_options`, click's parsed values → flat RunConfig fields, with
  :data:`RULES` for the few fields several options decide together;
- :data:`SET_BY`, the options that decide each field (a command-line value
  overrides the ``--config`` file's for exactly those fields);
- :data:`FORM`, the ``--config`` file form (section = the config part holding the
  field, key = the long flag without ``--``), read and written by loadgen.config_file.

The file section comes from the config dataclasses (:data:`loadgen.config.PART_OF`),
so where a field lives is declared once too. Peer tools' flags that loadgen does not
declare are a separate table of *their* names (loadgen.peer_flags), which rewrites
them into these options. Imports stay light (click and loadgen.config, both loaded
by the command anyway; click only when the options are built, since every result
file's writer reads :data:`FORM`): ``loadgen --help`` is on the start-up path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from loadgen.aggregate import DEFAULT_INLINE_LIMIT
from loadgen.config import (
    DEFAULT_RESULT_FILENAME,
    PART_OF,
    ConfigError,
    base_url_from,
    parse_chat_template_kwargs,
    parse_concurrencies,
    parse_extra_body,
    parse_goodput,
    parse_metadata,
    parse_percentiles,
    parse_rates,
)
from loadgen.protocols import BACKENDS
from loadgen.schedule import ARRIVALS
from loadgen.workload.spec import DATASETS

if TYPE_CHECKING:
    import click


@dataclass(frozen=True)
class Option:
    """One option of ``loadgen``: its spelling on the command line and its place in the configuration.

    ``field`` is the flat RunConfig field whose ``--config`` key is this option
    (``""``: the same as ``dest``; ``None``: the option has no field of its own).
    ``sets`` are further fields it takes part in (:data:`RULES` computes them), so a
    command-line value overrides the file's for them too. ``parse`` turns the
    command-line value into the field's value (identity when ``None``);
    ``file_shape`` turns a ``--config`` file's value (a TOML list or table) into the
    command-line shape ``parse`` reads, and ``to_file`` a field's value into the file's.
    """

    flag: str
    help: str
    group: str
    aliases: tuple[str, ...] = ()
    dest: str = ""  # click's parameter name; "" → the flag's
    field: str | None = ""
    sets: tuple[str, ...] = ()
    type: Any = None  # int, float or None (text)
    choices: tuple[str, ...] | None = None
    default: Any = None
    show_default: bool | None = None
    negation: str | None = None  # "--no-progress" for an on/off pair
    is_flag: bool = False
    multiple: bool = False
    words: bool = False  # several space-separated values after one flag, as vLLM's nargs="+"
    metavar: str | None = None
    envvar: str | None = None
    hidden: bool = False
    secret: bool = False  # never written to nor read from a file
    former_part: str | None = None  # the part whose file section held it before (still read)
    parse: Callable[[Any], Any] | None = None
    file_shape: Callable[[Any], Any] | None = None
    to_file: Callable[[Any], Any] | None = None

    @property
    def name(self) -> str:
        """click's parameter name: the keyword the command's callback gets."""
        return self.dest or self.flag.removeprefix("--").replace("-", "_")

    @property
    def key(self) -> str:
        """The option's key in a ``--config`` file."""
        return self.flag.removeprefix("--")

    @property
    def field_name(self) -> str | None:
        return self.name if self.field == "" else self.field

    def click_option(self) -> click.Option:
        import click  # here: result files read the form below without loading click

        decl = f"{self.flag}/{self.negation}" if self.negation else self.flag
        given: dict[str, Any] = {} if self.multiple and self.default is None else {"default": self.default}
        return click.Option(
            [decl, *self.aliases, self.name], type=click.Choice(self.choices) if self.choices else self.type,
            show_default=self.show_default, help=self.help, is_flag=self.is_flag or None, multiple=self.multiple,
            metavar=self.metavar, envvar=self.envvar, show_envvar=self.envvar is not None, hidden=self.hidden, **given,
        )


# ---------------------------------------------------------------- file shapes
#
# TOML has lists and tables where the command line has comma lists, repeated
# KEY:VALUE words and JSON text; these put a file's value in the command-line shape.


def _joined(value: Any) -> str:
    if isinstance(value, list):
        return ",".join("none" if v is None else str(v) for v in value)
    return str(value)


def _table(key: str) -> Callable[[Any], dict[str, Any]]:
    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, e.g. {{ ttft = 500 }}")
        return value
    return check


def _pairs(key: str, sep: str) -> Callable[[Any], list[str]]:
    return lambda value: [f"{k}{sep}{x}" for k, x in _table(key)(value).items()]


def _json_text(key: str) -> Callable[[Any], str]:
    return lambda value: value if isinstance(value, str) else json.dumps(_table(key)(value))


def _comma_tuple(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


# Help sections, in the order ``loadgen --help`` shows them.
TARGET, WORKLOAD, TRACE, SESSIONS, LOAD, OUTPUT, TELEMETRY, SCALE = (
    "Target", "Workload", "Trace replay (docs/workloads.md#trace-replay)",
    "Sessions (--dataset-name sessions; each a value or a distribution: 8, uniform:4:12, lognormal:2:1)",
    "Load shape", "Figures and files", "Telemetry", "Scale")
GENERAL = "Options"
GROUPS = (GENERAL, TARGET, WORKLOAD, TRACE, SESSIONS, LOAD, OUTPUT, TELEMETRY, SCALE)


OPTIONS: tuple[Option, ...] = (
    Option("--config", "Run the configuration saved in FILE: a TOML file, or a loadgen result JSON (its run_config). "
           "Options given on the command line override it.", GENERAL, dest="config_file", field=None, metavar="FILE"),
    # target
    Option("--base-url", "Server root, e.g. http://127.0.0.1:8000 (overrides --host/--port).", TARGET),
    Option("--host", "Server host when --base-url is not given. [default: 127.0.0.1]", TARGET, field=None,
           sets=("base_url",)),
    Option("--port", "Server port when --base-url is not given. [default: 8000]", TARGET, field=None,
           sets=("base_url",), type=int),
    Option("--endpoint", "Request path; default from --backend (/v1/completions, /v1/chat/completions, /generate).",
           TARGET),
    Option("--backend", "Wire protocol: openai (completions), vllm (openai + vLLM extensions), openai-chat, "
           "sglang (native /generate).", TARGET, choices=BACKENDS, default="openai", show_default=True),
    Option("--model", "Model name sent to the server. [default: first of /v1/models]", TARGET),
    Option("--served-model-name", "vLLM's spelling: the name sent to the server, while --model (a local folder) "
           "gives the tokenizer.", TARGET, field=None, sets=("model", "tokenizer")),
    Option("--tokenizer", "Local tokenizer folder, or 'deepseek-r1' (bundled). [default: --model if it is a local "
           "folder]", WORKLOAD, former_part="target"),
    Option("--api-key", "Bearer token for the server.", TARGET, envvar="OPENAI_API_KEY", secret=True,
           parse=lambda v: v or None),
    Option("--ca-cert", "PEM bundle of CA certificates to trust for an https server (e.g. a self-signed one).",
           TARGET, metavar="FILE"),
    Option("--insecure", "https without certificate verification (warns on stderr; recorded in the result).",
           TARGET, is_flag=True, default=False),
    # workload
    Option("--dataset-name", "Prompt source.", WORKLOAD, aliases=("--dataset",), dest="dataset", choices=DATASETS,
           default="random", show_default=True),
    Option("--dataset-path", "File for --dataset-name sharegpt, jsonl or a trace (mooncake, azure, burstgpt).",
           WORKLOAD),
    Option("--block-size", "Trace replay: prompt tokens per Mooncake hash id.", TRACE, type=int, default=512,
           show_default=True),
    Option("--trace-speedup", "Trace replay: divide the trace's times by this (2: twice as fast).", TRACE,
           type=float, default=1.0, show_default=True),
    Option("--trace-start", "Trace replay: seconds from the trace start where the window begins.", TRACE,
           dest="trace_start_s", type=float, default=0.0, show_default=True),
    Option("--trace-end", "Trace replay: where the window ends (s). [default: the end]", TRACE, dest="trace_end_s",
           type=float),
    Option("--trace-max-gap", "Trace replay: cap every idle gap between requests at this many seconds (before the "
           "speed-up).", TRACE, dest="trace_max_gap_s", type=float),
    Option("--trace-timing", "Trace replay: release at the trace's times (open loop), or in its order under "
           "--concurrency.", TRACE, choices=("trace", "order"), default="trace", show_default=True),
    Option("--trace-too-long", "Trace requests longer than the server's context (max_model_len): skip and count "
           "them, or shorten them.", TRACE, choices=("skip", "shorten"), default="skip", show_default=True),
    Option("--input-len", "Prompt length in tokens (random prompts).", WORKLOAD,
           aliases=("--random-input-len", "--random-input"), type=int, default=1024, show_default=True),
    Option("--output-len", "Output tokens asked per request (max_tokens).", WORKLOAD,
           aliases=("--random-output-len", "--random-output"), type=int, default=128, show_default=True),
    Option("--fixed-output-len", "sharegpt/jsonl: ask --output-len of every request instead of the dataset's reply "
           "length.", WORKLOAD, dest="output_len_fixed", is_flag=True, default=False),
    Option("--random-range-ratio", "Lengths drawn uniformly from [L*(1-r), L*(1+r)] (vLLM's convention).", WORKLOAD,
           dest="range_ratio", type=float, default=0.0, show_default=True),
    Option("--prefix-len", "Shared-prefix tokens at the start of each prompt.", WORKLOAD,
           aliases=("--random-prefix-len",), type=int, default=0, show_default=True),
    Option("--num-prefixes", "Distinct shared prefixes (0: one when --prefix-len > 0).", WORKLOAD, type=int,
           default=0, show_default=True),
    Option("--input-len-counts", "Whether --input-len includes the chat template (total) or only the user text "
           "(content).", WORKLOAD, choices=("total", "content"), default="total", show_default=True),
    Option("--verify-prompts", "Before the run, have the server's /tokenize count a sample of prompts; stop on a "
           "disagreement. [default: when the server has /tokenize]", WORKLOAD, negation="--no-verify-prompts"),
    Option("--num-prompts", "Requests per point. [default: 1000, or rate x --duration]", WORKLOAD, type=int),
    # sessions
    Option("--session-turns", "Sessions: turns per session (value or distribution).", SESSIONS, default="4",
           show_default=True),
    Option("--turn-input-len", "Sessions: new user tokens per turn. [default: --input-len]", SESSIONS),
    Option("--turn-output-len", "Sessions: output tokens per turn. [default: --output-len]", SESSIONS),
    Option("--system-prompt-len", "Sessions: tokens of the system prompt all sessions share.", SESSIONS,
           default="0", show_default=True),
    Option("--think-time", "Sessions: seconds between a reply's end and the next turn: S, exponential:MEAN, "
           "lognormal:MEAN:STD, ...", SESSIONS, default="0", show_default=True),
    Option("--history", "Sessions: earlier turns carry the server's actual replies (live) or replies built "
           "beforehand (recorded).", SESSIONS, choices=("live", "recorded"), default="live", show_default=True),
    Option("--session-header", "Sessions: send every turn with the header NAME: <session id> (routers keep a "
           "conversation on one replica).", SESSIONS, metavar="NAME"),
    # load shape
    Option("--duration", "Stop releasing after this many seconds per point.", LOAD, dest="duration_s", type=float),
    Option("--rate", "Requests per second: a number, 'inf', or a comma list for a sweep (1,2,inf).", LOAD,
           aliases=("--request-rate",), field="rates", default="inf", show_default=True, parse=parse_rates,
           file_shape=_joined, to_file=lambda v: ["inf" if math.isinf(r) else r for r in v]),
    Option("--arrival", "Arrival process for a finite rate.", LOAD, choices=ARRIVALS, default="poisson",
           show_default=True),
    Option("--burstiness", "Gamma shape: <1 burstier, >1 smoother than Poisson (!=1 implies --arrival gamma).",
           LOAD, type=float, default=1.0, show_default=True),
    Option("--concurrency", "Max requests in flight: a number or a comma list for a sweep (1,2,4,8). [default: "
           "unlimited]", LOAD, aliases=("--max-concurrency",), field="concurrencies", parse=parse_concurrencies,
           file_shape=_joined, to_file=lambda v: [c for c in v if c is not None]),
    Option("--warmup", "Requests sent before each point's measurement (excluded from the figures).", LOAD,
           aliases=("--num-warmups",), type=int, default=0, show_default=True),
    Option("--warmup-seconds", "With --duration: requests released in each point's first W seconds are warm-up "
           "(kept in the per-request store, flagged, left out of every figure).", LOAD, dest="warmup_s", type=float,
           default=0.0, show_default=True),
    Option("--repeat", "Run every point K times (one result file each: {repeat} in --result-filename, else a -repN "
           "suffix); loadgen-report gives confidence intervals across repeats. 'auto': repeat until --repeat-width.",
           LOAD, sets=("repeat_width", "repeat_metrics"), default="1", show_default=True),
    Option("--repeat-width", "--repeat auto: stop once the 95 % interval of the mean of every --repeat-metric is "
           "within ±PCT of it. [default: 5%]", LOAD, metavar="PCT"),
    Option("--repeat-metric", "--repeat auto: a result figure to converge (repeat the option). [default: "
           "output_throughput, p99_ttft_ms]", LOAD, dest="repeat_metrics", multiple=True, metavar="FIGURE",
           parse=_comma_tuple, file_shape=_joined),
    Option("--repeat-max", "--repeat auto: at most N runs. [default: 10]", LOAD, field=None, sets=("repeat",),
           type=int, metavar="N"),
    Option("--seed", "Seed for prompts and arrival times.", LOAD, type=int, default=0, show_default=True),
    Option("--ignore-eos", "Ask the server to generate exactly --output-len tokens. [default: on for random "
           "prompts, off for datasets]", WORKLOAD, negation="--no-ignore-eos"),
    Option("--extra-body", "JSON object merged into every request body, e.g. '{\"temperature\": 0}'.", TARGET,
           parse=parse_extra_body, file_shape=_json_text("extra-body")),
    Option("--reset-prefix-cache", "Empty the server's prefix cache before each point (vLLM POST "
           "/reset_prefix_cache, SGLang POST /flush_cache); a refusal or a hang is one line and recorded, the point "
           "still runs.", TARGET, is_flag=True, default=False),
    Option("--cache-salt", "Salt every request so no earlier run's prefix cache is reused; 'auto': a new salt per "
           "run (recorded).", TARGET, metavar="SALT|auto"),
    Option("--cache-salt-mode", "body: vLLM's cache_salt field; prefix: the prompt's leading pieces, same length "
           "(random prompts, traces). [default: body, prefix for --backend sglang]", TARGET,
           choices=("body", "prefix")),
    Option("--chat-template-kwargs", "JSON object sent as chat_template_kwargs (--backend openai-chat), e.g. "
           "'{\"enable_thinking\": false}' to turn a reasoning model's thinking off; recorded in the result.", TARGET,
           parse=parse_chat_template_kwargs, file_shape=_json_text("chat-template-kwargs")),
    Option("--timeout", "Per-request timeout in seconds.", TARGET, dest="timeout_s", type=float, default=600.0,
           show_default=True),
    # figures and files
    Option("--goodput", "SLOs for goodput, vLLM style: --goodput ttft:500 tpot:50 e2el:20000 (ms).", OUTPUT,
           field="goodput_slos_ms", multiple=True, words=True, parse=parse_goodput, file_shape=_pairs("goodput", ":")),
    Option("--percentiles", "Percentiles to report, comma-separated.", OUTPUT, aliases=("--metric-percentiles",),
           default="50,90,95,99", show_default=True, parse=parse_percentiles, file_shape=_joined),
    Option("--output-dir", "Folder for result files.", OUTPUT, aliases=("--result-dir",), default="results",
           show_default=True),
    Option("--result-filename", "File name template; fields {backend} {model} {concurrency} {rate} {input_len} "
           "{output_len} {num_prompts} {dataset} {label} {date} {seed} {arrival} {repeat}.", OUTPUT,
           aliases=("--output-file",), default=DEFAULT_RESULT_FILENAME, show_default=True),
    Option("--save-requests", "Also keep every chunk's arrival and token count (NAME.chunks.npy beside the "
           "per-request store).", OUTPUT, is_flag=True, default=False),
    Option("--max-inline-requests", "Keep vLLM's per-request arrays (ttfts, itls, ...) in the result JSON up to "
           "this many requests; above, they are only in the per-request store (NAME.requests.npy). 0: never.",
           OUTPUT, dest="inline_requests", type=int, default=DEFAULT_INLINE_LIMIT, show_default=True),
    Option("--save-text", "Keep generated texts (result 'generated_texts' and JSONL).", OUTPUT, is_flag=True,
           default=False),
    Option("--save-result", "Accepted for vLLM compatibility; results are always saved.", OUTPUT, field=None,
           is_flag=True, default=False, hidden=True),
    Option("--label", "A name for this run, stored in results and usable as {label}.", OUTPUT),
    Option("--metadata", "KEY=VALUE pairs stored in every result: --metadata gpu=H20 tp=8.", OUTPUT, multiple=True,
           words=True, parse=parse_metadata, file_shape=_pairs("metadata", "=")),
    Option("--progress", "Live progress while running.", OUTPUT, negation="--no-progress", default=True,
           show_default=True),
    Option("--grace", "Seconds in-flight requests get to finish after Ctrl-C or --duration.", LOAD, dest="grace_s",
           type=float, default=5.0, show_default=True),
    # telemetry
    Option("--server-metrics", "Prometheus URL scraped during each point, or 'off'. [default: the server's /metrics "
           "when it has one]", TELEMETRY),
    Option("--metrics-interval", "Seconds between scrapes of --server-metrics and --gpu-metrics.", TELEMETRY,
           dest="metrics_interval_s", type=float, default=1.0, show_default=True),
    Option("--gpu-metrics", "GPU telemetry: auto (NVML when loadgen runs on the GPU host), off, or a DCGM exporter "
           "URL.", TELEMETRY, default="auto", show_default=True, parse=lambda v: v or "auto"),
    # scale
    Option("--workers", "Client processes sharing each point's schedule (one uvloop client each; docs/scale.md). "
           "With --ray-address: Ray actors. [default: 1; with --ray-address, one per node]", SCALE, type=int),
    Option("--ray-address", "Run the workers as Ray actors spread over this Ray cluster ('auto': the one this "
           "machine is in). Needs pip install 'loadgen[ray]'.", SCALE, sets=("workers",), envvar="RAY_ADDRESS",
           parse=lambda v: v or None),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def group_of(name: str | None) -> str:
    """The ``--help`` section of a parameter (a command's own options and --help: the general one)."""
    option = BY_NAME.get(name or "")
    return option.group if option is not None else GENERAL


def click_params(skip: frozenset[str] = frozenset(), **changed: dict[str, Any]) -> list[click.Option]:
    """The click options, in table order; ``changed`` replaces some rows' attributes (``loadgen search``
    gives ``--duration`` its own default and meaning)."""
    return [replace(o, **changed.get(o.name, {})).click_option() for o in OPTIONS if o.name not in skip]


# Options that take several space-separated values (click repeats the option instead).
WORDS = tuple(name for o in OPTIONS if o.words for name in (o.flag, *o.aliases))


# ---------------------------------------------------------------- fields several options decide


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


def target_fields(opts: dict[str, Any]) -> dict[str, Any]:
    """Where to send, and (vLLM's convention) which name to send and which checkpoint holds the tokenizer."""
    served = opts.get("served_model_name")
    return {
        "base_url": base_url_from(opts.get("base_url"), opts.get("host"), opts.get("port")),
        # vLLM: --model is the checkpoint folder, --served-model-name the API name
        "model": served or opts.get("model"),
        "tokenizer": opts.get("tokenizer") or (opts.get("model") if served else None),
    }


def scale_fields(opts: dict[str, Any]) -> dict[str, Any]:
    """``--workers`` defaults to one process, or with ``--ray-address`` to one actor per node (0)."""
    workers = opts.get("workers")
    return {"workers": workers if workers is not None else (0 if opts.get("ray_address") else 1)}


# Each rule computes the fields it returns from several options (those whose ``sets`` name them).
RULES: tuple[tuple[tuple[str, ...], Callable[[dict[str, Any]], dict[str, Any]]], ...] = (
    (("base_url", "model", "tokenizer"), target_fields),
    (("repeat", "repeat_width", "repeat_metrics"), repeat_fields),
    (("workers",), scale_fields),
)
RULED = frozenset(f for fields, _ in RULES for f in fields)


def flat_from_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Click's parsed options → flat RunConfig fields (raises ConfigError).

    Options absent from ``opts`` (a command that reuses only some of them) leave
    their field to the configuration's default.
    """
    flat: dict[str, Any] = {}
    for o in OPTIONS:
        field = o.field_name
        if field is not None and field not in RULED and o.name in opts:
            value = opts[o.name]
            flat[field] = o.parse(value) if o.parse is not None else value
    for _, rule in RULES:
        flat.update(rule(opts))
    return flat


def _set_by() -> dict[str, tuple[str, ...]]:
    by: dict[str, list[str]] = {}
    for o in OPTIONS:
        field = o.field_name
        for name in (field,) if field else ():
            by.setdefault(name, []).append(o.name)
        for name in o.sets:
            by.setdefault(name, []).append(o.name)
    return {field: tuple(names) for field, names in by.items()}


# flat RunConfig field → the options that decide it
SET_BY = _set_by()

# The ``--config`` file form: section → {key: flat field}; top-level keys (seed) under "".
FORM: dict[str, dict[str, str]] = {}
for _o in OPTIONS:
    if _o.field_name is not None and not _o.secret:
        FORM.setdefault(PART_OF.get(_o.field_name, ""), {})[_o.key] = _o.field_name
TOP_LEVEL = FORM.pop("")
# (section, key) → field, for keys an older file form kept in another section
MOVED = {(o.former_part, o.key): o.field_name for o in OPTIONS if o.former_part and o.field_name}
SECRETS = (*(o.key for o in OPTIONS if o.secret), "basic-auth")  # basic-auth: the credentials of a URL
BY_FIELD = {o.field_name: o for o in OPTIONS if o.field_name is not None}
