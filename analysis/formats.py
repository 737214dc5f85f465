"""Recognise a result record and map it to one canonical run row.

Three producers write serving-benchmark results: ``loadgen`` itself, vLLM's
``benchmark_serving.py`` / ``vllm bench serve`` (one JSON object per file) and
SGLang's ``bench_serving`` (one JSON object per line, appended). They name the
same figures differently and record different context (SGLang records the asked
lengths, vLLM only the measured ones; neither records ignore_eos). Everything
here is a pure function of the parsed record and its file name, so the mapping
can be tested without touching the file system.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from analysis.energy import energy_columns
from analysis.errors import AnalysisError
from analysis.prefix_cache import cache_columns
from analysis.sessions import session_columns
from analysis.telemetry import server_columns
from analysis.trace_replay import trace_columns

LOADGEN = "loadgen"
VLLM = "vllm"
SGLANG = "sglang"
PEER_TOOLS = ("aiperf", "guidellm")

METRICS = ("ttft", "tpot", "itl", "e2el")
"""Latency metrics every producer reports (SGLang calls e2el ``e2e_latency``)."""

_STAT_KEY = re.compile(r"^(mean|median|std|min|max|p\d+(?:\.\d+)?)_([a-z0-9_]+?)_ms$")
_METRIC_ALIASES = {"e2e_latency": "e2el", "e2e": "e2el", "queue": "queue", "queue_time": "queue"}
_REPORT_NAME = re.compile(r"(\d+)_(\d+)_(\d+)\.jsonl?$")

# Top-level string keys of a vLLM result that are not --metadata entries.
_KNOWN_KEYS = frozenset({"date", "backend", "model_id", "tokenizer_id", "dataset_name", "label", "tag"})

# Keys whose value is a per-request list; they are kept out of the run row.
PER_REQUEST_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors", "e2els", "tpots")

# Numeric figures copied as they are when present (first name wins; later names are aliases).
_FIGURES: dict[str, tuple[str, ...]] = {
    "duration": ("duration", "duration_s"),
    "completed": ("completed",),
    "total_input_tokens": ("total_input_tokens", "total_input"),
    "total_output_tokens": ("total_output_tokens", "total_output"),
    "request_throughput": ("request_throughput",),
    "request_goodput": ("request_goodput", "request_goodput:", "goodput"),
    "input_throughput": ("input_throughput",),
    "output_throughput": ("output_throughput",),
    "total_token_throughput": ("total_token_throughput", "total_throughput"),
    "burstiness": ("burstiness",),
    "range_ratio": ("random_range_ratio", "range_ratio"),
    "prompt_token_mismatches": ("prompt_token_mismatches", "prompt_tokens_mismatch", "input_token_mismatches"),
    "warmup": ("warmup", "num_warmups", "warmup_requests"),
    # reasoning models (loadgen): requests that reasoned, those that never answered, the token split
    "reasoning_requests": ("reasoning_requests",),
    "no_answer": ("no_answer",),
    "total_reasoning_tokens": ("total_reasoning_tokens",),
    "total_answer_tokens": ("total_answer_tokens",),
}

# Engine settings that change performance; compared across runs when launch metadata exists.
_ENGINE_SETTINGS: dict[str, tuple[str, ...]] = {
    "eager": ("enforce_eager", "eager", "disable_cuda_graph", "cuda_graphs_disabled"),
    "context_length": ("max_model_len", "context_length", "max_model_length"),
    "mem_fraction": ("gpu_memory_utilization", "mem_fraction_static", "mem_fraction"),
    "tensor_parallel": ("tensor_parallel_size", "tp_size", "tp", "tensor_parallel"),
    "max_num_seqs": ("max_num_seqs", "max_running_requests"),
    "chunked_prefill": ("enable_chunked_prefill", "chunked_prefill_size"),
}


class FormatError(AnalysisError, ValueError):
    """A record that none of the known producers wrote; the message names the file and the fix."""


def detect_format(obj: Mapping[str, Any]) -> str:
    """Name the producer of one parsed result record, from the keys only it writes."""
    if not isinstance(obj, Mapping):
        raise FormatError("a result record must be a JSON object")
    tool = str(obj.get("tool") or obj.get("producer") or obj.get("generator") or "").lower()
    versions = obj.get("versions")
    if tool in PEER_TOOLS:  # AIPerf's and guidellm's results, flattened by analysis.peers
        return tool
    if tool.startswith("loadgen") or (isinstance(versions, Mapping) and "loadgen" in versions):
        return LOADGEN
    if str(obj.get("schema", "")).startswith("loadgen") or "loadgen_version" in obj:
        return LOADGEN
    if "client_saturated" in obj and "config" in obj:
        return LOADGEN
    has_figures = "output_throughput" in obj or "mean_ttft_ms" in obj
    if not has_figures:
        raise FormatError("no serving figures (output_throughput, mean_ttft_ms) in the record")
    if "mean_e2e_latency_ms" in obj or "random_input_len" in obj or "total_output_tokens_retokenized" in obj:
        return SGLANG
    if "model_id" in obj or "tokenizer_id" in obj or "total_token_throughput" in obj or "ttfts" in obj:
        return VLLM
    raise FormatError("keys match neither vLLM's benchmark_serving nor SGLang's bench_serving output")


# Keys that hold one number (or null) wherever a producer writes them; anything else there
# means the file is damaged or not what it claims, and is rejected rather than read as absent.
_NUMERIC_KEYS = frozenset(
    {name for names in _FIGURES.values() for name in names}
    | {"num_prompts", "failed", "max_concurrency", "mean_input_len", "mean_output_len", "total_requests"}
)
_LIST_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "errors")


def check_types(obj: Mapping[str, Any]) -> None:
    """Raise :class:`FormatError` naming the first known key whose value has the wrong type
    (``"completed": "many"``, a latency that is a string, ``output_lens`` that is not a list)."""
    for key, value in obj.items():
        if value is None:
            continue
        if key in _NUMERIC_KEYS or _STAT_KEY.match(key):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FormatError(f"'{key}' is {json_repr(value)}, not a number")
        elif key == "request_rate" and _num(value) is None:
            raise FormatError(f"'request_rate' is {json_repr(value)}, not a number or \"inf\"")
        elif key in _LIST_KEYS and not isinstance(value, list):
            raise FormatError(f"'{key}' is {json_repr(value)}, not a list")
        elif key == "errors_by_kind" and not isinstance(value, Mapping):
            raise FormatError(f"'errors_by_kind' is {json_repr(value)}, not an object")


def json_repr(value: Any) -> str:
    """A value as it appeared in the file, shortened for a one-line message."""
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 40 else text[:37] + "..."


def _num(value: Any) -> float | None:
    """A finite or infinite float, or None for anything that is not a number (``"inf"`` counts)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _int(value: Any) -> int | None:
    num = _num(value)
    if num is None or math.isnan(num) or math.isinf(num):
        return None
    return int(round(num))


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on", "y"):
            return True
        if low in ("0", "false", "no", "off", "n", ""):
            return False
    return None


def _first(mappings: list[Mapping[str, Any]], names: tuple[str, ...]) -> Any:
    for mapping in mappings:
        for name in names:
            if name in mapping and mapping[name] is not None:
                return mapping[name]
    return None


def _mean(values: Any) -> float | None:
    if not isinstance(values, list) or not values:
        return None
    nums = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return sum(nums) / len(nums) if nums else None


def _successful(obj: Mapping[str, Any], key: str) -> list[Any] | None:
    """The per-request list ``key`` without the entries of failed requests (``errors`` non-empty)."""
    values, errors = obj.get(key), obj.get("errors")
    if not isinstance(values, list):
        return None
    if not isinstance(errors, list) or len(errors) != len(values):
        return values
    return [v for v, e in zip(values, errors, strict=True) if not e]


def lengths_from_name(name: str) -> tuple[int, int, int] | None:
    """(concurrency, input_len, output_len) from the field report's ``serving_benchmark_{c}_{in}_{out}.json``."""
    match = _REPORT_NAME.search(name)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def _stats(obj: Mapping[str, Any]) -> dict[str, float]:
    """Every ``<stat>_<metric>_ms`` figure under canonical metric names (``median`` is also ``p50``)."""
    out: dict[str, float] = {}
    for key, value in obj.items():
        match = _STAT_KEY.match(key)
        num = _num(value)
        if not match or num is None:
            continue
        stat, metric = match.groups()
        metric = _METRIC_ALIASES.get(metric, metric)
        out[f"{stat}_{metric}_ms"] = num
    for metric in list({k.split("_", 1)[1] for k in out}):
        median, p50 = f"median_{metric}", f"p50_{metric}"
        if median in out and p50 not in out:
            out[p50] = out[median]
        elif p50 in out and median not in out:
            out[median] = out[p50]
    return out


def _quantile(sorted_values: list[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default), on an already sorted list."""
    pos = (len(sorted_values) - 1) * p / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _stats_from_lists(obj: Mapping[str, Any]) -> dict[str, float]:
    """Percentiles a producer did not write but its per-request lists (vLLM's, in seconds) allow."""
    ttfts, itls, outs = obj.get("ttfts"), obj.get("itls"), obj.get("output_lens")
    if not isinstance(ttfts, list) or not ttfts:
        return {}
    errors = obj.get("errors") if isinstance(obj.get("errors"), list) else [""] * len(ttfts)
    samples: dict[str, list[float]] = {"ttft": [], "tpot": [], "itl": [], "e2el": []}
    for i, ttft in enumerate(ttfts):
        if (i < len(errors) and errors[i]) or not isinstance(ttft, int | float) or ttft <= 0:
            continue
        gaps = itls[i] if isinstance(itls, list) and i < len(itls) and isinstance(itls[i], list) else []
        samples["ttft"].append(ttft * 1000.0)
        samples["itl"].extend(g * 1000.0 for g in gaps)
        samples["e2el"].append((ttft + sum(gaps)) * 1000.0)
        out_len = outs[i] if isinstance(outs, list) and i < len(outs) else None
        if isinstance(out_len, int) and out_len > 1:
            samples["tpot"].append(sum(gaps) * 1000.0 / (out_len - 1))
    result: dict[str, float] = {}
    for metric, values in samples.items():
        if not values:
            continue
        values.sort()
        result[f"mean_{metric}_ms"] = sum(values) / len(values)
        for p in (50, 90, 99):
            result[f"p{p}_{metric}_ms"] = _quantile(values, p)
        result[f"median_{metric}_ms"] = result["p50_" + metric + "_ms"]
    return result


def engine_settings(mappings: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Engine settings from launch metadata, including flags found in a recorded server command line."""
    found: dict[str, Any] = {}
    for key, names in _ENGINE_SETTINGS.items():
        value = _first(mappings, names)
        if value is not None:
            found[key] = value
    for mapping in mappings:
        for cmd_key in ("server_args", "server_command", "launch_command", "engine_args", "command"):
            cmd = mapping.get(cmd_key)
            if isinstance(cmd, list):
                cmd = " ".join(str(c) for c in cmd)
            if isinstance(cmd, str) and cmd:
                found.update({k: v for k, v in parse_server_flags(cmd).items() if k not in found})
    if "eager" in found:
        found["eager"] = _bool(found["eager"])
    for key in ("context_length", "tensor_parallel", "max_num_seqs"):
        if key in found:
            found[key] = _int(found[key])
    if "mem_fraction" in found:
        found["mem_fraction"] = _num(found["mem_fraction"])
    return found


def parse_server_flags(command: str) -> dict[str, Any]:
    """The performance-relevant flags of a vLLM or SGLang command line (``-`` and ``_`` spellings alike)."""
    tokens = command.replace("=", " = ").split()
    found: dict[str, Any] = {}

    def value_after(i: int) -> str | None:
        j = i + 1
        if j < len(tokens) and tokens[j] == "=":
            j += 1
        return tokens[j] if j < len(tokens) and not tokens[j].startswith("--") else None

    for i, tok in enumerate(tokens):
        if not tok.startswith("--"):
            continue
        flag = tok[2:].replace("-", "_")
        if flag in ("enforce_eager", "disable_cuda_graph"):
            nxt = value_after(i)
            found["eager"] = _bool(nxt) if nxt is not None and _bool(nxt) is not None else True
            continue
        for key, names in _ENGINE_SETTINGS.items():
            if key != "eager" and flag in names:
                nxt = value_after(i)
                if nxt is not None:
                    found[key] = nxt
    return found


def normalize(obj: Mapping[str, Any], name: str = "", fmt: str | None = None) -> dict[str, Any]:
    """One canonical run row from one record; ``name`` is the file name (it may carry the grid point)."""
    fmt = fmt or detect_format(obj)
    config = obj.get("config") if isinstance(obj.get("config"), Mapping) else {}
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    launch = metadata.get("launch") if isinstance(metadata.get("launch"), Mapping) else {}
    server = obj.get("server") if isinstance(obj.get("server"), Mapping) else {}
    # vLLM's --metadata k=v lands at the top level; ours under "metadata"; launch facts under either.
    views: list[Mapping[str, Any]] = [obj, metadata, launch, server, config]
    check_types(obj)
    row: dict[str, Any] = {"format": fmt}
    for key, names in _FIGURES.items():
        row[key] = _num(_first([obj], names))
    if row["completed"] != 0:  # nothing completed: no latency was measured, whatever zeros the file holds
        row.update(_stats(obj))
        for key, value in _stats_from_lists(obj).items():
            row.setdefault(key, value)

    num_prompts = _int(_first([obj, config], ("num_prompts", "total_requests")))
    completed = _int(obj.get("completed"))
    failed = _int(obj.get("failed"))
    errors = obj.get("errors")
    if failed is None and isinstance(errors, list):
        failed = sum(1 for e in errors if e)
    if failed is None and num_prompts is not None and completed is not None:
        failed = max(num_prompts - completed, 0)
    if num_prompts is None and completed is not None:
        num_prompts = completed + (failed or 0)
    row["num_prompts"] = num_prompts
    row["failed"] = failed
    total = (completed or 0) + (failed or 0)
    row["error_rate"] = (failed / total) if failed is not None and total else (0.0 if completed else None)

    rate = _num(_first([obj, config], ("request_rate", "rate")))
    row["request_rate"] = math.inf if rate is None else rate
    grid = lengths_from_name(name)
    max_conc = _int(_first([obj, config], ("max_concurrency", "concurrency_limit")))
    if fmt == VLLM and max_conc is None:
        max_conc = _int(_first([config], ("concurrency",)))
    row["max_concurrency"] = max_conc
    if max_conc is not None:
        concurrency = max_conc
    elif grid is not None:
        concurrency = grid[0]
    elif math.isinf(row["request_rate"]) and num_prompts is not None:
        concurrency = num_prompts  # an unthrottled burst: every request is in flight at once
    else:
        concurrency = None
    row["concurrency"] = concurrency
    # SGLang's and loadgen's "concurrency" is the measured mean in flight, not the limit.
    row["measured_concurrency"] = _num(obj.get("concurrency")) if fmt != VLLM else None

    in_asked = _int(_first([obj, config, metadata], ("random_input_len", "input_len", "input_length")))
    out_asked = _int(_first([obj, config, metadata], ("random_output_len", "output_len", "output_length")))
    if grid is not None:
        in_asked = in_asked if in_asked is not None else grid[1]
        out_asked = out_asked if out_asked is not None else grid[2]
    if fmt == LOADGEN and (isinstance(obj.get("trace"), Mapping) or isinstance(obj.get("sessions"), Mapping)):
        # a trace's lengths are its rows', a session's grow turn by turn: the config's --input-len
        # default was never asked for (the mean lengths say what was sent)
        in_asked = out_asked = None
    row["input_len"] = in_asked
    row["output_len"] = out_asked
    # Mean lengths are over completed requests: vLLM lists a failed request with output
    # length 0, which is no evidence that the server stopped early.
    mean_in, mean_out = _num(obj.get("mean_input_len")), _num(obj.get("mean_output_len"))
    if mean_in is None and row["total_input_tokens"] is not None and completed:
        mean_in = row["total_input_tokens"] / completed
    if mean_out is None and row["total_output_tokens"] is not None and completed:
        mean_out = row["total_output_tokens"] / completed
    if mean_in is None:
        mean_in = _mean(_successful(obj, "input_lens"))
    if mean_out is None:
        mean_out = _mean(_successful(obj, "output_lens"))
    row["mean_input_len"] = mean_in
    row["mean_output_len"] = mean_out
    if row["input_throughput"] is None and row["total_input_tokens"] is not None and row["duration"]:
        row["input_throughput"] = row["total_input_tokens"] / row["duration"]
    if row["total_token_throughput"] is None and row["input_throughput"] is not None and row["output_throughput"] is not None:
        row["total_token_throughput"] = row["input_throughput"] + row["output_throughput"]

    ignore_eos = _bool(_first([obj, config, metadata], ("ignore_eos",)))
    disable_ignore = _bool(_first([obj, config, metadata], ("disable_ignore_eos",)))
    if ignore_eos is None and disable_ignore is not None:
        ignore_eos = not disable_ignore
    if ignore_eos is not None:
        row["ignore_eos"], row["ignore_eos_source"] = ignore_eos, "recorded"
    elif fmt == VLLM:
        row["ignore_eos"], row["ignore_eos_source"] = False, "default of vLLM's benchmark_serving"
    elif fmt == SGLANG:
        row["ignore_eos"], row["ignore_eos_source"] = True, "default of SGLang's bench_serving"
    else:
        row["ignore_eos"], row["ignore_eos_source"] = None, "unknown"

    row["dataset"] = _first([obj, config, metadata], ("dataset", "dataset_name"))
    if isinstance(row["dataset"], Mapping):
        row["dataset"] = row["dataset"].get("name") or row["dataset"].get("dataset")
    backend = obj.get("backend") or config.get("backend")
    row["backend"] = backend
    row["model"] = _first([obj, config, metadata], ("model_id", "model", "served_model_name"))
    row["tokenizer"] = _first([obj, config], ("tokenizer_id", "tokenizer"))
    engine = _first([metadata, launch, server, obj], ("engine",))
    if engine is None and fmt == SGLANG:
        engine = "sglang" if str(backend or "sglang").startswith("sglang") else backend
    if engine is None and fmt == VLLM and backend in ("vllm", "sglang", "lmdeploy", "tgi", "trt"):
        engine = backend
    row["engine"] = engine
    versions = obj.get("versions") if isinstance(obj.get("versions"), Mapping) else {}
    version = _first([metadata, launch, server, obj, {"server": versions.get("server")}],
                     ("engine_version", "server_version", "version", "server"))
    row["engine_version"] = str(version) if version is not None else None
    row["preset"] = _first([metadata, launch, obj, config], ("preset",))
    row["profile"] = _first([metadata, launch, obj, server], ("profile", "sim_profile"))
    # sim --time-scale X: every latency is X times shorter than the emulated deployment's
    row["time_scale"] = _num(_first([server, metadata, launch], ("time_scale",)))
    repeat = obj.get("repeat") if isinstance(obj.get("repeat"), Mapping) else {}
    row["repeat"] = _int(repeat.get("index"))
    row["repeats"] = _int(repeat.get("of"))
    label = _first([obj, metadata, config], ("label", "tag", "run_label"))
    row["label"] = str(label) if label is not None else None
    row["date"] = obj.get("date")
    row["client_saturated"] = _bool(obj.get("client_saturated")) or False
    row["partial"] = _bool(obj.get("partial")) or False
    row["output_tokens_source"] = obj.get("output_tokens_source")
    row["errors_by_kind"] = obj.get("errors_by_kind") if isinstance(obj.get("errors_by_kind"), Mapping) else None
    for key in ("loop_lag_p50_ms", "loop_lag_p99_ms", "loop_lag_max_ms", "warmup_requests", "good_completed"):
        if key in obj:
            row[key] = _num(obj[key])
    row.update({f"engine_{k}": v for k, v in engine_settings(views).items()})
    row["metadata"] = dict(metadata) if metadata else {
        k: v for k, v in obj.items() if k not in _KNOWN_KEYS and isinstance(v, str)
    }
    row["burst"] = is_burst(row)
    row.update(server_columns(obj))  # server_metrics (loadgen --server-metrics)
    row.update(cache_columns(obj))  # prefix_cache (loadgen)
    row.update(energy_columns(obj))  # gpu_metrics' energy counter → J per token
    row.update(session_columns(obj))  # sessions (loadgen --dataset-name sessions)
    row.update(trace_columns(obj))  # trace (loadgen --dataset-name mooncake|azure|burstgpt)
    return row


def is_burst(row: Mapping[str, Any]) -> bool:
    """True when the point is one wave: every request released at once, nothing in steady state."""
    conc, prompts = row.get("concurrency"), row.get("num_prompts")
    if conc is None or prompts is None:
        return False
    rate = row.get("request_rate")
    return prompts <= conc and (rate is None or math.isinf(rate))

