"""The validated configuration of a run or sweep, and the parsers behind each option.

Everything a user can get wrong is checked here, before any work starts, and every
rejection is one line that names the option and the fix (:class:`ConfigError`; the
CLI turns it into a usage error, exit code 2).
"""

from __future__ import annotations

import json
import math
import os
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from loadgen.aggregate import DEFAULT_INLINE_LIMIT
from loadgen.connection import Connection
from loadgen.errors import LoadgenError
from loadgen.metrics import DEFAULT_PERCENTILES, GOODPUT_METRICS
from loadgen.protocols import BACKENDS
from loadgen.protocols.base import merge_body
from loadgen.redaction import MASK, mask_url, split_credentials
from loadgen.schedule import ARRIVALS
from loadgen.workload.errors import WorkloadError
from loadgen.workload.replay import ReplayOptions
from loadgen.workload.spec import DATASETS, TRACE_DATASETS, SessionSpec, WorkloadSpec

DEFAULT_RESULT_FILENAME = "{backend}-c{concurrency}-r{rate}-i{input_len}-o{output_len}-{date}.json"
FILENAME_FIELDS = (
    "backend", "model", "concurrency", "rate", "input_len", "output_len", "num_prompts",
    "dataset", "label", "date", "seed", "arrival", "repeat", "trace", "speedup", "turns",
)
# What the default template becomes for workloads whose lengths are not --input-len/--output-len:
# a trace brings its own (named by its file and speed-up), a session's are per turn.
TRACE_RESULT_FILENAME = "{backend}-c{concurrency}-{dataset}-{trace}-x{speedup}-{date}.json"
SESSIONS_RESULT_FILENAME = "{backend}-c{concurrency}-r{rate}-sessions-t{turns}-i{input_len}-o{output_len}-{date}.json"
SALT_MODES = ("body", "prefix")  # --cache-salt-mode


class ConfigError(LoadgenError, ValueError):
    """A bad option or combination; the message is one line with the fix."""

    kind = "option"


# ---------------------------------------------------------------- option parsers


def parse_rates(text: str) -> list[float]:
    """``"10"``, ``"inf"``, ``"1,2,inf"`` → request rates (req/s)."""
    rates: list[float] = []
    for part in _split_list(text, "--rate"):
        low = part.lower()
        if low in ("inf", "infinity", "max"):
            rates.append(math.inf)
            continue
        value = _convert(float, part, f"--rate: '{part}' is not a number; give e.g. --rate 10, --rate inf or --rate 1,2,inf")
        if not value > 0 or math.isinf(value):
            raise ConfigError(f"--rate must be > 0 (or inf), got {part}; give e.g. --rate 10 or --rate inf")
        rates.append(value)
    return rates


def parse_concurrencies(text: str | None) -> list[int | None]:
    """``"8"``, ``"1,2,4"`` → concurrency limits; ``None`` → one unlimited point."""
    if text is None or text.strip().lower() in ("", "none", "unlimited"):
        return [None]
    values: list[int | None] = []
    for part in _split_list(text, "--concurrency"):
        value = _convert(int, part, f"--concurrency: '{part}' is not a whole number; give e.g. --concurrency 8 or 1,2,4")
        if value < 1:
            raise ConfigError(f"--concurrency must be >= 1, got {value}; omit it for no limit")
        values.append(value)
    return values


def parse_goodput(items: list[str] | tuple[str, ...]) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` (or comma-joined) → SLOs in ms, vLLM's ``--goodput`` form."""
    slos: dict[str, float] = {}
    for item in items:
        for part in _split_list(item, "--goodput"):
            name, sep, value = part.partition(":")
            name = name.strip().lower()
            if not sep or name not in GOODPUT_METRICS:
                raise ConfigError(
                    f"--goodput: '{part}' is not METRIC:MS with METRIC one of {', '.join(GOODPUT_METRICS)}; "
                    "give e.g. --goodput ttft:500 tpot:50"
                )
            ms = _convert(float, value, f"--goodput: '{value}' in '{part}' is not a number of milliseconds")
            if not ms > 0 or math.isinf(ms):
                raise ConfigError(f"--goodput: the {name} SLO must be a positive number of ms, got {value}")
            slos[name] = ms
    return slos


def parse_percentiles(text: str) -> list[float]:
    """``"50,90,99"`` → percentiles in (0, 100]."""
    values: list[float] = []
    for part in _split_list(text, "--percentiles"):
        p = _convert(float, part, f"--percentiles: '{part}' is not a number; give e.g. --percentiles 50,90,99")
        if not 0 < p <= 100:
            raise ConfigError(f"--percentiles: {part} is outside (0, 100]; give e.g. --percentiles 50,90,99,99.9")
        if p not in values:
            values.append(p)
    return values


def parse_metadata(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["gpu=H20", "tp=8"]`` → a dict stored verbatim in every result file."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--metadata: '{item}' is not KEY=VALUE; give e.g. --metadata gpu=H20 tp=8")
        out[key.strip()] = value
    return out


def parse_extra_body(text: str | None, option: str = "--extra-body",
                     example: str = '{"temperature": 0}') -> dict[str, Any] | None:
    """A JSON object merged into every request body (sampling parameters and the like)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{option} is not valid JSON ({exc.msg} at char {exc.pos}); give e.g. {option} '{example}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object, e.g. {option} '{example}'")
    return value


def parse_chat_template_kwargs(text: str | None) -> dict[str, Any] | None:
    """``--chat-template-kwargs``: passed to the server's chat template (e.g. thinking off)."""
    return parse_extra_body(text, "--chat-template-kwargs", '{"enable_thinking": false}')


def base_url_from(base_url: str | None, host: str | None, port: int | None) -> str:
    """``--base-url`` wins; else ``http://HOST:PORT`` (vLLM's and SGLang's defaults are 127.0.0.1:8000-ish)."""
    if base_url:
        url = base_url.strip().rstrip("/")
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"--base-url '{mask_url(base_url)}' is not an http(s) URL; give e.g. --base-url http://127.0.0.1:8000")
        if host or port:
            raise ConfigError("give either --base-url or --host/--port, not both")
        return url
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a TCP port (1-65535)")
    host = host or "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port or 8000}"


def _convert(convert: Callable[[str], Any], text: str, message: str) -> Any:
    """``convert(text)``, or a :class:`ConfigError` with ``message`` when it does not parse."""
    try:
        return convert(text)
    except ValueError:
        raise ConfigError(message) from None


def _split_list(text: str, option: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise ConfigError(f"{option}: empty item in '{text}'; separate values with single commas")
    return parts


# ---------------------------------------------------------------- the configuration
#
# A run is five frozen parts, each validated once when it is built. Validation is
# pure: it reads no file and changes nothing (normalisation, such as taking the
# credentials out of --base-url, happens before construction and returns new
# values); files named by options are checked in pre-flight (loadgen.server_checks).


@dataclass(frozen=True)
class TargetConfig:
    """Where and how to send: the server, its wire protocol, credentials and TLS trust."""

    base_url: str = "http://127.0.0.1:8000"
    endpoint: str | None = None
    backend: str = "openai"
    model: str | None = None
    api_key: str | None = None
    basic_auth: tuple[str, str] | None = None  # credentials taken out of --base-url
    ca_cert: str | None = None  # a PEM CA bundle to trust for https (--ca-cert)
    insecure: bool = False  # https without certificate verification (--insecure)
    timeout_s: float = 600.0
    extra_body: dict[str, Any] | None = None
    reset_prefix_cache: bool = False  # reset the server's prefix cache before each point
    cache_salt: str | None = None  # "auto" (a new salt per run) or a fixed salt sent as the body's cache_salt
    cache_salt_mode: str | None = None  # body | prefix (the prompt's leading pieces); None: body, prefix for sglang
    chat_template_kwargs: dict[str, Any] | None = None  # sent as the chat body's chat_template_kwargs

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend '{self.backend}' is unknown; use one of {', '.join(BACKENDS)}")
        if split_credentials(self.base_url)[1] is not None:
            raise ConfigError("--base-url still carries credentials; build the target with target_from()")
        if self.basic_auth and self.api_key:
            raise ConfigError(
                "--base-url carries credentials and --api-key (or $OPENAI_API_KEY) is set: both would go in the "
                "Authorization header; drop one"
            )
        if self.ca_cert and self.insecure:
            raise ConfigError("--ca-cert and --insecure contradict each other: trust a CA, or verify nothing")
        if (self.ca_cert or self.insecure) and not self.base_url.startswith("https:"):
            raise ConfigError(
                f"--{'ca-cert' if self.ca_cert else 'insecure'} applies to https servers only; "
                f"--base-url is {self.base_url}"
            )
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ConfigError(f"--timeout must be a positive number of seconds, got {self.timeout_s}")
        if self.chat_template_kwargs is not None and self.backend != "openai-chat":
            raise ConfigError(f"--chat-template-kwargs applies to --backend openai-chat only, not '{self.backend}'")
        if self.endpoint is not None and not self.endpoint.startswith("/"):
            raise ConfigError(f"--endpoint '{self.endpoint}' must be a path starting with '/', e.g. /v1/completions")
        if self.cache_salt is not None and not self.cache_salt.strip():
            raise ConfigError("--cache-salt must not be empty; give a salt, or 'auto' for a new one per run")
        if self.cache_salt_mode is not None and self.cache_salt is None:
            raise ConfigError("--cache-salt-mode needs --cache-salt (e.g. --cache-salt auto)")
        if self.cache_salt_mode not in (None, *SALT_MODES):
            raise ConfigError(f"--cache-salt-mode must be one of {', '.join(SALT_MODES)}, got '{self.cache_salt_mode}'")
        if self.salt_mode == "body" and self.backend == "sglang":
            raise ConfigError("--cache-salt-mode body sends the body's cache_salt, which SGLang's /generate does not "
                              "take; use --cache-salt-mode prefix (the default for sglang)")

    @property
    def salt_mode(self) -> str | None:
        """How ``--cache-salt`` is sent: the body's ``cache_salt`` field (vLLM), or written into
        the prompt's leading pieces (``prefix``, the default where the field is not taken)."""
        if self.cache_salt is None:
            return None
        return self.cache_salt_mode or ("prefix" if self.backend == "sglang" else "body")

    @property
    def chat(self) -> bool:
        return self.backend == "openai-chat"

    def body_extra(self) -> dict[str, Any] | None:
        """What every request body gets on top of the protocol's own: ``--extra-body``, and
        ``--chat-template-kwargs`` as ``chat_template_kwargs`` (merged into the one
        ``--extra-body`` may already hold, the dedicated option winning)."""
        if self.chat_template_kwargs is None:
            return self.extra_body
        return merge_body(self.extra_body or {}, {"chat_template_kwargs": self.chat_template_kwargs})

    def connection(self) -> Connection:
        """Credentials and TLS trust, as every piece of network code must apply them."""
        return Connection(basic_auth=self.basic_auth, ca_cert=self.ca_cert, insecure=self.insecure)


def target_from(base_url: str, **fields: Any) -> TargetConfig:
    """A :class:`TargetConfig` whose URL credentials (``http://user:pw@host``) move to
    ``basic_auth``, so that printing the URL cannot leak them."""
    clean, creds = split_credentials(base_url)
    if creds is not None:
        fields["basic_auth"] = creds
    return TargetConfig(base_url=clean, **fields)


MAX_NUM_PROMPTS = 1_000_000_000  # every prompt is built before the run: beyond this none fits in memory


@dataclass(frozen=True)
class WorkloadConfig:
    """What to send: the prompt source and lengths, and the tokenizer that counts them (resolved into a
    WorkloadSpec in pre-flight)."""

    dataset: str = "random"
    tokenizer: str | None = None  # None: the model, when it is a local folder (tokenizer_for)
    dataset_path: str | None = None
    num_prompts: int | None = None  # None: 1000, or rate × duration
    input_len: int = 1024
    output_len: int = 128
    output_len_fixed: bool = False  # sharegpt/jsonl: every request asks output_len, not the dataset's length
    range_ratio: float = 0.0
    prefix_len: int = 0
    num_prefixes: int = 0
    input_len_counts: str = "total"
    verify_prompts: bool | None = None  # None: when the server has /tokenize
    ignore_eos: bool | None = None  # None: on for random prompts, off for datasets
    block_size: int = 512  # trace replay: tokens per hash id
    trace_speedup: float = 1.0
    trace_start_s: float = 0.0
    trace_end_s: float | None = None
    trace_max_gap_s: float | None = None
    trace_timing: str = "trace"  # trace: open loop at the trace's times; order: under the concurrency cap
    trace_too_long: str = "skip"  # requests beyond the server's context: skip | shorten
    # sessions (--dataset-name sessions): values or distributions (loadgen.workload.dist)
    session_turns: str = "4"
    turn_input_len: str | None = None  # None: --input-len
    turn_output_len: str | None = None  # None: --output-len
    system_prompt_len: str = "0"
    think_time: str = "0"
    history: str = "live"
    session_header: str | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"--dataset-name '{self.dataset}' is unknown; use one of {', '.join(DATASETS)}")
        if self.session_header is not None and not _is_token(self.session_header):
            raise ConfigError(f"--session-header '{self.session_header}' is not an HTTP header name; use e.g. X-Session-Id")
        if self.dataset not in ("random", "sessions") and not self.dataset_path:
            raise ConfigError(f"--dataset-name {self.dataset} needs --dataset-path FILE")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ConfigError(f"--num-prompts must be >= 1, got {self.num_prompts}")
        if self.num_prompts is not None and self.num_prompts > MAX_NUM_PROMPTS:
            raise ConfigError(f"--num-prompts {self.num_prompts} is more than one run can hold (at most "
                              f"{MAX_NUM_PROMPTS:,}); for a long run give --duration SECONDS with a rate")
        if self.input_len < 1:
            raise ConfigError(f"--input-len must be >= 1, got {self.input_len}")
        if self.output_len < 1:
            raise ConfigError(f"--output-len must be >= 1, got {self.output_len}")
        if not 0.0 <= self.range_ratio <= 1.0:
            raise ConfigError(f"--random-range-ratio must be in [0, 1], got {self.range_ratio}")
        if self.prefix_len < 0 or self.num_prefixes < 0:
            raise ConfigError("--prefix-len and --num-prefixes must be >= 0")
        if self.prefix_len and self.prefix_len >= self.input_len:
            raise ConfigError(f"--prefix-len {self.prefix_len} leaves no room in --input-len {self.input_len}; make it smaller")
        if self.input_len_counts not in ("total", "content"):
            raise ConfigError(f"--input-len-counts must be total or content, got '{self.input_len_counts}'")
        if self.block_size < 1:
            raise ConfigError(f"--block-size must be >= 1 token, got {self.block_size}")
        try:
            self.replay().check()
        except WorkloadError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def is_trace(self) -> bool:
        return self.dataset in TRACE_DATASETS

    def asked_lengths(self) -> tuple[int | str | None, int | str | None]:
        """The input and output length the workload was asked for: ``--input-len``/``--output-len``,
        a session's per-turn values (a value or a distribution), or ``None`` for a trace,
        whose lengths are its rows'."""
        if self.is_trace:
            return None, None
        if self.dataset == "sessions":
            return self.turn_input_len or self.input_len, self.turn_output_len or self.output_len
        return self.input_len, self.output_len

    def replay(self) -> ReplayOptions:
        """The replay controls of a trace dataset (``--num-prompts`` limits the requests sent)."""
        return ReplayOptions(speedup=self.trace_speedup, start_s=self.trace_start_s, end_s=self.trace_end_s,
                             max_gap_s=self.trace_max_gap_s, limit=self.num_prompts, timing=self.trace_timing,
                             too_long=self.trace_too_long)

    @property
    def effective_ignore_eos(self) -> bool:
        # a trace's output lengths are what production generated: ask for exactly those
        return (self.dataset in ("random", "sessions") or self.is_trace) if self.ignore_eos is None else self.ignore_eos

    def spec(self, *, num_prompts: int, chat: bool, seed: int, tokenizer: str) -> WorkloadSpec:
        """The prompt set to build, once the tokenizer and the prompt count are known."""
        return WorkloadSpec(
            dataset=self.dataset, num_prompts=num_prompts, input_len=self.input_len, output_len=self.output_len,
            range_ratio=self.range_ratio, dataset_path=self.dataset_path, prefix_len=self.prefix_len,
            num_prefixes=self.num_prefixes, chat=chat, input_len_counts=self.input_len_counts, seed=seed,
            tokenizer=tokenizer, block_size=self.block_size, output_len_fixed=self.output_len_fixed,
            session=self.session_spec(),
        )

    def tokenizer_for(self, model: str) -> str | None:
        """The tokenizer to load once the served model is known: ``--tokenizer``, else the model
        when it names a local folder (a checkpoint holds its tokenizer); None: none can be found offline."""
        if self.tokenizer is not None:
            return self.tokenizer
        return model if Path(model).expanduser().is_dir() else None

    def session_spec(self) -> SessionSpec | None:
        if self.dataset != "sessions":
            return None
        return SessionSpec(turns=self.session_turns, user_len=self.turn_input_len, output_len=self.turn_output_len,
                           system_len=self.system_prompt_len, think_s=self.think_time, history=self.history)


def arrival_for(arrival: str, burstiness: float) -> str:
    """vLLM's rule: a burstiness other than 1 means gamma arrivals."""
    return "gamma" if arrival == "poisson" and burstiness != 1.0 else arrival


@dataclass(frozen=True)
class ScheduleConfig:
    """The load shape: points (concurrency × rate), arrivals, how long, how often, on how many clients."""

    rates: tuple[float, ...] = (math.inf,)
    arrival: str = "poisson"
    burstiness: float = 1.0
    concurrencies: tuple[int | None, ...] = (None,)
    duration_s: float | None = None
    warmup: int = 0
    warmup_s: float = 0.0  # requests released in the first W s of a point are warm-up (steady state)
    repeat: int = 1  # run every point this many times (one result file each); with repeat_width, at most
    repeat_width: float | None = None  # --repeat auto: stop once the metrics' 95 % intervals are this narrow
    repeat_metrics: tuple[str, ...] = ()
    grace_s: float = 5.0
    workers: int = 1  # client processes (with ray_address: Ray actors; 0 = one per node)
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.arrival not in ARRIVALS:
            raise ConfigError(f"--arrival '{self.arrival}' is unknown; use one of {', '.join(ARRIVALS)}")
        if not self.burstiness > 0 or math.isinf(self.burstiness):
            raise ConfigError(f"--burstiness must be a positive number, got {self.burstiness} (1 = Poisson)")
        if self.arrival == "poisson" and self.burstiness != 1.0:
            raise ConfigError(f"--burstiness {self.burstiness:g} needs --arrival gamma (see arrival_for)")
        if self.duration_s is not None and not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise ConfigError(f"--duration must be a positive number of seconds, got {self.duration_s}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0 requests, got {self.warmup}")
        if not (self.warmup_s >= 0 and math.isfinite(self.warmup_s)):
            raise ConfigError(f"--warmup-seconds must be a number of seconds >= 0, got {self.warmup_s}")
        if self.warmup_s and self.duration_s is not None and self.warmup_s >= self.duration_s:
            raise ConfigError(f"--warmup-seconds {self.warmup_s:g} leaves nothing of --duration {self.duration_s:g} "
                              "to measure; make it shorter than the duration")
        if self.repeat < 1:
            raise ConfigError(f"--repeat must be >= 1, got {self.repeat}")
        if self.repeat_width is not None:
            from loadgen.convergence import MIN_RUNS, RepeatError, check_metrics, parse_width

            try:
                parse_width(self.repeat_width)
                check_metrics(self.repeat_metrics)
            except RepeatError as exc:
                raise ConfigError(str(exc)) from None
            if self.repeat < MIN_RUNS:
                raise ConfigError(f"--repeat-max {self.repeat} is below the {MIN_RUNS} runs an interval needs")
        if not (self.grace_s >= 0 and math.isfinite(self.grace_s)):
            raise ConfigError(f"--grace must be a number of seconds >= 0, got {self.grace_s}")
        if not self.rates:
            raise ConfigError("--rate needs at least one value")
        if self.workers < 0 or (self.workers == 0 and not self.ray_address):
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.ray_address:
            from importlib.util import find_spec

            try:
                missing = find_spec("ray") is None
            except ValueError:  # sys.modules["ray"] is None: blocked on purpose
                missing = True
            if missing:
                raise ConfigError("--ray-address needs Ray, which is not installed: pip install 'loadgen[ray]'")

    def points(self) -> list[tuple[int | None, float]]:
        """Load points in run order: for each concurrency, each rate."""
        return [(c, r) for c in self.concurrencies for r in self.rates]


@dataclass(frozen=True)
class OutputConfig:
    """What is written and reported: files, figures, labels."""

    output_dir: str = "results"
    result_filename: str = DEFAULT_RESULT_FILENAME
    save_requests: bool = False
    save_text: bool = False
    inline_requests: int = DEFAULT_INLINE_LIMIT
    percentiles: tuple[float, ...] = tuple(DEFAULT_PERCENTILES)
    goodput_slos_ms: dict[str, float] = field(default_factory=dict)
    label: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.inline_requests < 0:
            raise ConfigError(f"--max-inline-requests must be >= 0 (0: never inline), got {self.inline_requests}")
        template_fields(self.result_filename)


@dataclass(frozen=True)
class TelemetryConfig:
    """What is scraped beside the load: the server's Prometheus metrics and the GPUs."""

    server_metrics: str | None = None  # None: the server's /metrics when it has one; "off"; or a URL
    metrics_interval_s: float = 1.0
    gpu_metrics: str = "auto"  # auto (NVML when usable), off, or a DCGM exporter URL

    def __post_init__(self) -> None:
        if self.server_metrics is not None and self.server_metrics != "off" and not _is_url(self.server_metrics):
            raise ConfigError(f"--server-metrics '{self.server_metrics}' is not an http(s) URL or 'off'; "
                              "give e.g. --server-metrics http://127.0.0.1:8000/metrics")
        if not (self.metrics_interval_s >= 0.05 and math.isfinite(self.metrics_interval_s)):
            raise ConfigError(f"--metrics-interval must be a number of seconds >= 0.05, got {self.metrics_interval_s}")
        if self.gpu_metrics not in ("auto", "off") and not _is_url(self.gpu_metrics):
            raise ConfigError(f"--gpu-metrics '{self.gpu_metrics}' is not auto, off or the http(s) URL of a DCGM "
                              "exporter; give e.g. --gpu-metrics http://gpu-host:9400/metrics")


PARTS = {"target": TargetConfig, "workload": WorkloadConfig, "schedule": ScheduleConfig, "output": OutputConfig,
         "telemetry": TelemetryConfig}
# flat field name → the part that holds it (RunConfig.from_flat, RunConfig.updated)
PART_OF = {f.name: part for part, cls in PARTS.items() for f in fields(cls)}


def _timed_prompts(rates: Sequence[float], duration_s: float | None) -> float | None:
    """Requests a duration-bounded sweep of finite rates sends at its fastest rate (None: not such a sweep)."""
    finite = [r for r in rates if not math.isinf(r)]
    if duration_s is None or not finite or len(finite) != len(rates):
        return None
    return max(finite) * duration_s


@dataclass(frozen=True)
class RunConfig:
    """One invocation: a target, a workload, a load shape, outputs and telemetry, and one seed
    (prompts and arrival times)."""

    target: TargetConfig = field(default_factory=TargetConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        """The checks that span parts."""
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        names = template_fields(self.output.result_filename)
        s = self.schedule
        if len(s.points()) > 1:
            if len(s.concurrencies) > 1 and "concurrency" not in names:
                raise ConfigError("a concurrency sweep writes one file per point: add {concurrency} to --result-filename")
            if len(s.rates) > 1 and "rate" not in names:
                raise ConfigError("a rate sweep writes one file per point: add {rate} to --result-filename")
        if self.workload.is_trace:
            _check_trace_schedule(self.workload, s)
        if self.target.salt_mode == "prefix" and self.workload.dataset not in ("random", *TRACE_DATASETS):
            raise ConfigError(f"--cache-salt-mode prefix salts prompts built from pieces (random prompts, traces), not "
                              f"'{self.workload.dataset}' rows; use --cache-salt-mode body (vLLM) or --reset-prefix-cache")
        if self.workload.dataset == "sessions" and not self.target.chat:
            raise ConfigError("--dataset-name sessions sends conversations: add --backend openai-chat")
        wanted = _timed_prompts(s.rates, s.duration_s)
        if not self.workload.is_trace and self.workload.num_prompts is None and wanted is not None \
                and not wanted <= MAX_NUM_PROMPTS:
            raise ConfigError(f"--rate {max(s.rates):g} for --duration {s.duration_s:g} s is {wanted:,.3g} requests, more "
                              f"than one run can hold (at most {MAX_NUM_PROMPTS:,}): lower --rate or --duration")

    @classmethod
    def from_flat(cls, **flat: Any) -> RunConfig:
        """Build from flat option fields (``base_url=``, ``rates=``, ``output_dir=``, ...),
        normalising first: URL credentials move to ``basic_auth``, a burstiness other
        than 1 selects gamma arrivals, lists become tuples."""
        unknown = set(flat) - set(PART_OF) - {"seed"}
        if unknown:
            raise TypeError(f"unknown RunConfig field(s): {', '.join(sorted(unknown))}")
        parts: dict[str, dict[str, Any]] = {name: {} for name in PARTS}
        for key, value in flat.items():
            if key != "seed":
                parts[PART_OF[key]][key] = tuple(value) if isinstance(value, list) else value
        sched = parts["schedule"]
        sched["arrival"] = arrival_for(sched.get("arrival", "poisson"), sched.get("burstiness", 1.0))
        target = parts.pop("target")
        return cls(
            target=target_from(target.pop("base_url", TargetConfig.base_url), **target),
            **{name: PARTS[name](**values) for name, values in parts.items()},
            seed=flat.get("seed", 0),
        )

    def flat(self) -> dict[str, Any]:
        """Every field by its flat name (the inverse of :meth:`from_flat`)."""
        out: dict[str, Any] = {}
        for name in PARTS:
            part = getattr(self, name)
            out.update({f.name: getattr(part, f.name) for f in fields(part)})
        out["seed"] = self.seed
        return out

    def updated(self, **flat: Any) -> RunConfig:
        """A copy with some flat fields changed, validated again (e.g. one probe of a search)."""
        merged = self.flat()
        merged.update(flat)
        if "base_url" not in flat and self.target.basic_auth is not None and "basic_auth" not in flat:
            merged["basic_auth"] = self.target.basic_auth
        return RunConfig.from_flat(**merged)

    # Defaults that depend on other parts are resolved here, once.
    @property
    def effective_ignore_eos(self) -> bool:
        return self.workload.effective_ignore_eos

    @property
    def chat(self) -> bool:
        return self.target.chat

    def prompts_needed(self) -> int:
        """Prompts to build: asked count, else rate × duration, else 1000.

        Every point of a sweep reuses the same prompt set, so a duration-bounded sweep
        builds enough for its fastest finite rate.
        """
        if self.workload.num_prompts is not None:
            return self.workload.num_prompts
        wanted = _timed_prompts(self.schedule.rates, self.schedule.duration_s)
        return max(1, math.ceil(wanted)) if wanted is not None else 1000

    def max_input_len(self) -> int:
        """The longest random prompt this configuration can draw (vLLM's range rule)."""
        return math.ceil(self.workload.input_len * (1 + self.workload.range_ratio))

    def max_output_len(self) -> int:
        return self.workload.output_len

    def connection(self) -> Connection:
        return self.target.connection()

    def points(self) -> list[tuple[int | None, float]]:
        return self.schedule.points()

    def to_dict(self) -> dict[str, Any]:
        """The configuration as stored in result files' ``config`` key: one flat mapping, as
        before the parts existed (the API key and URL credentials are never written)."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in self.flat().items()}
        d["api_key"] = MASK if self.target.api_key else None
        d["basic_auth"] = MASK if self.target.basic_auth else None
        d["rates"] = [_rate_json(r) for r in self.schedule.rates]
        d["ignore_eos"] = self.effective_ignore_eos
        return d


def _check_trace_schedule(w: WorkloadConfig, s: ScheduleConfig) -> None:
    """A trace brings its own arrival times: the options that would set others are refused."""
    if s.rates != (math.inf,):
        raise ConfigError(f"--rate does not apply to --dataset-name {w.dataset}: the trace sets the arrival times; "
                          "use --trace-speedup to replay faster or slower")
    if w.trace_timing == "order" and None in s.concurrencies:
        raise ConfigError("--trace-timing order sends the trace's requests in order as fast as a concurrency cap "
                          "allows: give --concurrency N")


def template_fields(template: str) -> set[str]:
    """The fields a ``--result-filename`` template uses; a ConfigError for a path or an unknown field."""
    if os.sep in template or (os.altsep and os.altsep in template):
        raise ConfigError("--result-filename is a file name, not a path; put the folder in --output-dir")
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"--result-filename '{template}' is not a valid template ({exc}); use fields like {{concurrency}}") from None
    unknown = {n.split(".")[0].split("[")[0].split("!")[0].split(":")[0] for n in names} - set(FILENAME_FIELDS)
    if unknown:
        raise ConfigError(
            f"--result-filename: unknown field(s) {', '.join(sorted('{' + u + '}' for u in unknown))}; "
            f"available: {', '.join('{' + f + '}' for f in FILENAME_FIELDS)}"
        )
    return names


def _is_token(text: str) -> bool:
    """An HTTP header name (RFC 9110 token)."""
    return bool(text) and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in text) and text.isascii()


def _is_url(text: str) -> bool:
    parsed = urlparse(text)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def _rate_json(rate: float) -> float | str:
    return "inf" if math.isinf(rate) else rate


def rate_label(rate: float) -> str:
    """How a rate appears in file names and tables: ``inf`` or a compact number."""
    return "inf" if math.isinf(rate) else f"{rate:g}"


_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_filename_part(value: Any) -> str:
    """Model ids carry slashes; file names may not."""
    return _SAFE.sub("_", str(value)).strip("_") or "_"
