"""The benchmark flags of vLLM and SGLang that loadgen has no option of the same name for.

A serving engineer's muscle memory is ``benchmark_serving.py`` (vLLM 0.8), ``vllm bench
serve`` or ``python -m sglang.bench_serving``. Flags of those tools that loadgen declares
itself (``--request-rate``, ``--max-concurrency``, ``--random-prefix-len`` …) are aliases
of its click options. Every other flag of theirs is a row of :data:`TABLE`: either
*accepted* — rewritten, before click parses, into the loadgen options of the same
meaning (possibly none: a setting loadgen always has) — or *refused* with one line naming
what to do instead. Nothing is ever silently ignored when loadgen would measure
something different from what the flag asks.

The table is data: a new upstream flag is one row (tests/loadgen/test_peer_flags.py walks the
tools' real flag lists and fails on a flag neither declared nor listed here).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from loadgen.errors import LoadgenError

# Names vLLM's --percentile-metrics accepts; loadgen reports percentiles of all of them always.
PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")


class PeerFlagError(LoadgenError, ValueError):
    """A peer tool's flag loadgen refuses, or a bad value for one it accepts; ``str()`` is the one line."""


@dataclass(frozen=True)
class PeerFlag:
    """One peer flag: what it becomes in loadgen, or why not.

    ``to`` is the loadgen argv it is rewritten to, ``{value}`` standing for the flag's
    (transformed) value; ``()`` accepts it as what loadgen always does. ``refuse`` is the
    hint printed instead; a row has ``to`` or ``refuse``, never both.
    """

    names: tuple[str, ...]
    takes_value: bool = False
    to: tuple[str, ...] | None = None
    value: str | None = None  # name of a VALUE_TRANSFORMS entry
    refuse: str | None = None


def _reciprocal(text: str) -> str:
    """SGLang's --mooncake-slowdown-factor 2 (twice as slow) is loadgen's --trace-speedup 0.5."""
    factor = float(text)
    if factor <= 0:
        raise ValueError("must be greater than 0")
    return repr(1.0 / factor)


def _metric_names(text: str) -> str:
    """Check vLLM's --percentile-metrics list; loadgen reports every one of them anyway."""
    unknown = [m for m in text.split(",") if m.strip() not in PERCENTILE_METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; choose from {','.join(PERCENTILE_METRICS)}")
    return text


VALUE_TRANSFORMS: dict[str, Callable[[str], str]] = {"reciprocal": _reciprocal, "metric_names": _metric_names}


def _accept(*names: str, to: tuple[str, ...] = (), value: str | None = None) -> PeerFlag:
    return PeerFlag(names, takes_value=any("{value}" in part for part in to) or value is not None, to=to, value=value)


def _refuse(*names: str, hint: str, takes_value: bool = True) -> PeerFlag:
    return PeerFlag(names, takes_value=takes_value, refuse=hint)


# {field} and {json} in a hint: the flag as a request field and its value as JSON
_EXTRA_BODY = "send it in the request body: --extra-body '{\"{field}\": {json}}'"
_DATASETS = "loadgen's prompt sources are random, sharegpt, jsonl and traces: export the prompts to JSONL " \
            "(one {\"prompt\": ...} per line) and give --dataset-name jsonl --dataset-path FILE"
_PROFILER = "loadgen does not drive the server's profiler: call the server's /start_profile and /stop_profile " \
            "around the run"
_PLOTS = "loadgen-report draws the plots from the result files: loadgen-report RESULTS_DIR --out REPORT_DIR"
_LORA = "loadgen sends one model name: give the adapter's name as --model (a sweep: one run per adapter)"
_GSP = "use --dataset-name random with --prefix-len (system-prompt tokens), --num-prefixes (groups) and " \
       "--input-len (prefix + question tokens)"
_GENERATION = "loadgen benchmarks generation (completions and chat), not embeddings or reranking"
_TRACE = "loadgen reads Mooncake, Azure and BurstGPT traces in their own formats: --dataset-name mooncake|azure|" \
         "burstgpt --dataset-path FILE (docs/workloads.md#trace-replay)"

TABLE: tuple[PeerFlag, ...] = (
    # accepted: the same meaning under a loadgen option
    _accept("--disable-tqdm", to=("--no-progress",)),
    _accept("--save-detailed", "--output-details", to=("--save-text",)),
    _accept("--disable-ignore-eos", to=("--no-ignore-eos",)),
    _accept("--extra-request-body", to=("--extra-body", "{value}")),
    _accept("--warmup-requests", to=("--warmup", "{value}")),
    _accept("--flush-cache", to=("--reset-prefix-cache",)),
    _accept("--self-timed", "--use-trace-timestamps", to=("--trace-timing", "trace")),
    _accept("--no-self-timed", to=("--trace-timing", "order")),
    _accept("--mooncake-slowdown-factor", to=("--trace-speedup", "{value}"), value="reciprocal"),
    _accept("--tag", to=("--metadata", "tag={value}")),
    # accepted: what loadgen always does
    _accept("--percentile-metrics", value="metric_names"),  # percentiles of ttft, tpot, itl, e2el are all reported
    _accept("--trust-remote-code"),  # loadgen's tokenizers run no remote code
    # refused: one line naming loadgen's way
    _refuse("--disable-stream", takes_value=False,
            hint="loadgen always streams (TTFT and ITL need it); drop the flag"),
    _refuse("--use-beam-search", takes_value=False, hint="loadgen sends sampling requests only; drop the flag"),
    _refuse("--temperature", "--top-p", "--top-k", "--min-p", "--frequency-penalty", "--presence-penalty",
            "--repetition-penalty", hint=_EXTRA_BODY),
    _refuse("--logprobs", "--top-logprobs-num", "--logprob-start-len", hint=_EXTRA_BODY),
    _refuse("--token-ids-logprob", hint="send the token ids in the request body: --extra-body "
                                       "'{\"token_ids_logprob\": [1, 2]}' (--backend sglang)"),
    _refuse("--return-logprob", "--return-routed-experts", takes_value=False, hint=_EXTRA_BODY),
    _refuse("--tokenizer-mode", hint="loadgen loads the tokenizer.json of --tokenizer (a local folder); drop the flag"),
    _refuse("--skip-tokenizer-init", "--tokenize-prompt", takes_value=False,
            hint="loadgen sends text prompts built and counted with --tokenizer; drop the flag"),
    _refuse("--header", hint="loadgen sends Authorization from --api-key; other headers are not supported"),
    _refuse("--request-id-prefix", hint="loadgen numbers its requests itself; drop the flag"),
    _refuse("--append-result", takes_value=False,
            hint="loadgen writes one result file per point; loadgen-report reads a whole folder of them"),
    _refuse("--ramp-up-strategy", "--ramp-up-start-rps", "--ramp-up-end-rps", "--probe-request-rate",
            hint="sweep the rate instead: --rate 1,2,4,8 (one point each), or find the limit with loadgen search"),
    _refuse("--ready-check-timeout-sec",
            hint="loadgen checks the server once before the run; start it first (loadgen-launch waits until ready)"),
    _accept("--sharegpt-output-len", to=("--output-len", "{value}", "--fixed-output-len")),
    _refuse("--hf-output-len", "--sonnet-output-len", "--custom-output-len",
            "--spec-bench-output-len", "--speed-bench-output-len", "--prefix-repetition-output-len",
            hint="loadgen reads sharegpt, jsonl and traces; export the prompts to JSONL and give "
                 "--dataset-name jsonl --dataset-path FILE --output-len N --fixed-output-len"),
    _refuse("--sharegpt-context-len",
            hint="loadgen keeps ShareGPT conversations that fit the server's max_model_len; drop the flag"),
    _refuse("--random-batch-size", hint=_GENERATION),
    _refuse("--no-reranker", takes_value=False, hint=_GENERATION),
    _refuse("--hf-subset", "--hf-split", "--hf-name", "--sonnet-input-len", "--sonnet-prefix-len",
            "--blazedit-min-distance", "--blazedit-max-distance", "--asr-max-audio-len-sec",
            "--asr-min-audio-len-sec", "--spec-bench-category", "--speed-bench-category",
            "--speed-bench-dataset-subset", "--bfcl-categories",
            "--dataset-offset", "--agentic-max-turns", hint=_DATASETS),
    _refuse("--no-stream", "--no-oversample", "--disable-shuffle", "--skip-chat-template", "--apply-chat-template",
            "--enable-multimodal-chat", "--custom-ensure-client-side-data", takes_value=False, hint=_DATASETS),
    _refuse("--prompt-suffix", hint=_DATASETS),
    _refuse("--random-mm-base-items-per-request", "--random-mm-num-mm-items-range-ratio",
            "--random-mm-limit-mm-per-prompt", "--random-mm-bucket-config", "--image-count", "--image-resolution",
            "--image-format", "--image-content", hint="loadgen sends text prompts only; multimodal is not supported"),
    _refuse("--random-image-count", takes_value=False,
            hint="loadgen sends text prompts only; multimodal is not supported"),
    _refuse("--prefix-repetition-prefix-len", "--prefix-repetition-suffix-len", "--prefix-repetition-num-prefixes",
            "--gsp-num-groups", "--gsp-prompts-per-group", "--gsp-system-prompt-len", "--gsp-question-len",
            "--gsp-output-len", "--gsp-range-ratio", "--gsp-num-turns", "--gsp-group-distribution",
            "--gsp-zipf-alpha", hint=_GSP),
    _refuse("--gsp-fast-prepare", "--gsp-send-routing-key", "--gsp-ordered", takes_value=False, hint=_GSP),
    _refuse("--timed-trace-chunk-hash-size", "--timed-trace-sec-multiplier", "--timed-trace-label-timestamp",
            "--timed-trace-label-input-length", "--timed-trace-label-output-length", "--timed-trace-label-hash-ids",
            "--mooncake-num-rounds", "--mooncake-workload", hint=_TRACE),
    _refuse("--lora-modules", "--lora-assignment", "--lora-name", "--lora-request-distribution", "--lora-zipf-alpha",
            hint=_LORA),
    _refuse("--profile", "--profile-by-stage", takes_value=False, hint=_PROFILER),
    _refuse("--profile-activities", "--profile-start-step", "--profile-steps", "--profile-num-steps",
            "--profile-stages", "--profile-output-dir", "--profile-prefix", "--profile-prefill-url",
            "--profile-decode-url", hint=_PROFILER),
    _refuse("--plot-timeline", "--plot-dataset-stats", "--plot-throughput", takes_value=False, hint=_PLOTS),
    _refuse("--timeline-itl-thresholds", hint=_PLOTS),
    _refuse("--print-requests", takes_value=False,
            hint="watch the live progress, or give --save-text and read NAME.details.jsonl"),
    _refuse("--cache-report", takes_value=False,
            hint="the prefix-cache hit rate is always in the result (prefix_cache) and the printed summary"),
    _refuse("--flush-cache-timeout", hint="--reset-prefix-cache waits a bounded time and records the outcome"),
    _refuse("--pd-separated", "--pd-seperated", "--fake-prefill", takes_value=False,
            hint="point --base-url at the disaggregated router; loadgen measures it like any server"),
    _refuse("--rust-client", takes_value=False, hint="loadgen's client is its own; scale it with --workers N"),
    _refuse("--rust-worker-threads", hint="loadgen's client is its own; scale it with --workers N"),
)


# Values of loadgen options spelt the peer tools' way: SGLang's --backend names → loadgen's wire protocols.
VALUES: dict[str, dict[str, str]] = {
    "--backend": {"sglang-native": "sglang", "sglang-oai": "openai", "sglang-oai-chat": "openai-chat",
                  "vllm-chat": "openai-chat", "lmdeploy": "openai", "lmdeploy-chat": "openai-chat"},
}


def _index(table: Iterable[PeerFlag]) -> dict[str, PeerFlag]:
    index: dict[str, PeerFlag] = {}
    for row in table:
        for name in row.names:
            if name in index:
                raise AssertionError(f"{name} appears twice in the peer flag table")
            index[name] = row
    return index


BY_NAME = _index(TABLE)


def _hint(hint: str, name: str, value: str | None) -> str:
    """Fill a hint's {field} and {json} with the refused flag as a request field and its value."""
    if value is None:
        shown = "true"
    else:
        try:
            shown = json.dumps(json.loads(value))
        except ValueError:
            shown = json.dumps(value)
    return hint.replace("{field}", name.lstrip("-").replace("-", "_")).replace("{json}", shown)


def _rewrite(name: str, row: PeerFlag, value: str | None) -> list[str]:
    """One peer flag (and its value) → loadgen argv; raises PeerFlagError."""
    if row.refuse is not None:
        raise PeerFlagError(f"{name}: {_hint(row.refuse, name, value)}")
    if row.value is not None and value is not None:
        try:
            value = VALUE_TRANSFORMS[row.value](value)
        except ValueError as exc:
            raise PeerFlagError(f"{name} {value}: {exc}") from None
    return [part.replace("{value}", value or "") for part in row.to or ()]


def translate(args: list[str], value_options: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Rewrite the peer flags of ``args`` into loadgen options; raises PeerFlagError for a refused one.

    ``value_options`` are loadgen's own options that take a value, so that a value
    which looks like a flag (``--label --tag``) is left alone. ``--`` ends the flags.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            return out + args[i - 1:]
        name, eq, inline = arg.partition("=")
        row = BY_NAME.get(name) if name.startswith("--") else None
        if row is None:
            if eq and name in VALUES:
                arg = f"{name}={VALUES[name].get(inline, inline)}"
            out.append(arg)
            if arg in value_options and i < len(args):
                out.append(VALUES.get(arg, {}).get(args[i], args[i]))
                i += 1
            continue
        value: str | None = None
        if row.takes_value:
            if eq:
                value = inline
            elif i < len(args):
                value, i = args[i], i + 1
            elif row.refuse is None:
                raise PeerFlagError(f"{name} needs a value")
        elif eq and row.refuse is None:
            raise PeerFlagError(f"{name} takes no value")
        out.extend(_rewrite(name, row, value))
    return out
