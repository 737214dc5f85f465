"""The file form of a run configuration: what ``--config FILE`` reads and every result records.

The form is the configuration's parts as sections (``[target]``, ``[workload]``,
``[schedule]``, ``[output]``, ``[telemetry]``) whose keys are the long option names
(``input-len``, ``rate``, ...), plus a top-level ``seed``. It is read from a TOML file
or from a result JSON's ``run_config`` key, so ``loadgen --config results/x.json``
runs that point's configuration again. Secrets (the API key, credentials in the URL)
are never written, and a file that holds an API key is refused: a reproduction asks
for them again through ``--api-key``/``$OPENAI_API_KEY`` or ``--base-url``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from loadgen.config import (
    PARTS,
    ConfigError,
    RunConfig,
    parse_chat_template_kwargs,
    parse_concurrencies,
    parse_extra_body,
    parse_goodput,
    parse_metadata,
    parse_percentiles,
    parse_rates,
)

# section → {option name (the file's key): flat RunConfig field}
FORM: dict[str, dict[str, str]] = {
    "target": {"base-url": "base_url", "endpoint": "endpoint", "backend": "backend", "model": "model",
               "tokenizer": "tokenizer", "ca-cert": "ca_cert", "insecure": "insecure", "timeout": "timeout_s",
               "extra-body": "extra_body", "reset-prefix-cache": "reset_prefix_cache", "cache-salt": "cache_salt",
               "cache-salt-mode": "cache_salt_mode",
               "chat-template-kwargs": "chat_template_kwargs"},
    "workload": {"dataset-name": "dataset", "dataset-path": "dataset_path", "num-prompts": "num_prompts",
                 "input-len": "input_len", "output-len": "output_len",
                 "fixed-output-len": "output_len_fixed", "random-range-ratio": "range_ratio",
                 "prefix-len": "prefix_len", "num-prefixes": "num_prefixes", "input-len-counts": "input_len_counts",
                 "verify-prompts": "verify_prompts", "ignore-eos": "ignore_eos",
                 "block-size": "block_size", "trace-speedup": "trace_speedup", "trace-start": "trace_start_s",
                 "trace-end": "trace_end_s", "trace-max-gap": "trace_max_gap_s", "trace-timing": "trace_timing",
                 "trace-too-long": "trace_too_long",
                 "session-turns": "session_turns", "turn-input-len": "turn_input_len",
                 "turn-output-len": "turn_output_len", "system-prompt-len": "system_prompt_len",
                 "think-time": "think_time", "history": "history", "session-header": "session_header"},
    "schedule": {"rate": "rates", "arrival": "arrival", "burstiness": "burstiness", "concurrency": "concurrencies",
                 "duration": "duration_s", "warmup": "warmup", "warmup-seconds": "warmup_s", "repeat": "repeat",
                 "repeat-width": "repeat_width", "repeat-metric": "repeat_metrics",
                 "grace": "grace_s", "workers": "workers", "ray-address": "ray_address"},
    "output": {"output-dir": "output_dir", "result-filename": "result_filename", "save-requests": "save_requests",
               "save-text": "save_text", "max-inline-requests": "inline_requests", "percentiles": "percentiles",
               "goodput": "goodput_slos_ms", "label": "label", "metadata": "metadata", "progress": "progress"},
    "telemetry": {"server-metrics": "server_metrics", "metrics-interval": "metrics_interval_s",
                  "gpu-metrics": "gpu_metrics"},
}
SECRETS = ("api-key", "basic-auth")
SESSION_FIELDS = frozenset({"session_turns", "turn_input_len", "turn_output_len", "system_prompt_len", "think_time",
                            "history", "session_header"})
# flat fields whose file value is not the field's own type, and how to read it
_PARSERS = {
    "rates": lambda v: parse_rates(_joined(v)),
    "concurrencies": lambda v: parse_concurrencies(_joined(v)),
    "percentiles": lambda v: parse_percentiles(_joined(v)),
    "repeat_metrics": lambda v: tuple(_joined(v).split(",")),
    "goodput_slos_ms": lambda v: parse_goodput([f"{k}:{x}" for k, x in _table(v, "goodput").items()]),
    "metadata": lambda v: parse_metadata([f"{k}={x}" for k, x in _table(v, "metadata").items()]),
    "extra_body": lambda v: parse_extra_body(v if isinstance(v, str) else json.dumps(_table(v, "extra-body"))),
    "chat_template_kwargs": lambda v: parse_chat_template_kwargs(
        v if isinstance(v, str) else json.dumps(_table(v, "chat-template-kwargs"))),
}


def to_form(cfg: RunConfig) -> dict[str, Any]:
    """The configuration in its file form (no secrets; unset options left out)."""
    flat = cfg.flat()
    out: dict[str, Any] = {"seed": cfg.seed}
    for section, keys in FORM.items():
        values: dict[str, Any] = {}
        for key, name in keys.items():
            value = flat[name]
            if name == "rates":
                value = ["inf" if math.isinf(r) else r for r in value]
            elif name == "concurrencies":
                value = [c for c in value if c is not None]
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            if value is None or value == [] or value == {}:
                continue
            if name in SESSION_FIELDS and flat["dataset"] != "sessions":
                continue  # session options only in a session run's file
            values[key] = value
        out[section] = values
    return out


def flat_from_form(form: Any, source: str) -> dict[str, Any]:
    """A file form → flat RunConfig fields, every key and type checked (one-line ConfigError)."""
    if not isinstance(form, dict):
        raise ConfigError(f"--config {source}: not a table of sections; see docs/loadgen.md for the form")
    flat: dict[str, Any] = {}
    for section, values in form.items():
        if section == "seed":
            flat["seed"] = _typed(values, int, f"--config {source}: seed")
            continue
        if section in SECRETS:
            raise ConfigError(_secret_message(source, section))
        if section not in FORM:
            raise ConfigError(f"--config {source}: unknown section or key '{section}'; "
                              f"use seed and [{'], ['.join(FORM)}]")
        if not isinstance(values, dict):
            raise ConfigError(f"--config {source}: '{section}' must be a table ([{section}])")
        for key, value in values.items():
            where = f"--config {source}: [{section}] {key}"
            if key in SECRETS:
                raise ConfigError(_secret_message(source, key))
            name = FORM[section].get(key)
            if name is None:
                raise ConfigError(f"{where} is unknown; [{section}] takes {', '.join(FORM[section])}")
            if name in _PARSERS:
                try:
                    flat[name] = _PARSERS[name](value)
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
            else:
                flat[name] = _typed(value, _FIELD_TYPES[name], where)
    return flat


def read(path: str) -> dict[str, Any]:
    """``--config FILE``: a TOML file, or a result JSON (its ``run_config``) → flat fields."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--config '{path}' cannot be read ({exc.strerror}); check the path") from None
    if p.suffix == ".json":
        try:
            result = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"--config '{path}' is not valid JSON ({exc}); give a TOML file or a result JSON") from None
        if not isinstance(result, dict) or "run_config" not in result:
            raise ConfigError(f"--config '{path}' is a JSON file without 'run_config': give a loadgen result "
                              "file (written by this version or later) or a TOML file")
        return flat_from_form(result["run_config"], path)
    import tomllib  # only with --config: not on every start

    try:
        form = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config '{path}' is not valid TOML ({exc}); see docs/loadgen.md for the form") from None
    return flat_from_form(form, path)


def _secret_message(source: str, key: str) -> str:
    return (f"--config {source}: '{key}' is a secret and is never read from a file; pass --api-key "
            "(or set $OPENAI_API_KEY), or put the credentials in --base-url")


def _joined(value: Any) -> str:
    if isinstance(value, list):
        return ",".join("none" if v is None else str(v) for v in value)
    return str(value)


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table, e.g. {{ ttft = 500 }}")
    return value


_FIELD_TYPES: dict[str, type] = {}
for _cls in PARTS.values():
    for _name, _annotation in _cls.__annotations__.items():
        _text = str(_annotation)
        _FIELD_TYPES[_name] = (bool if _text.startswith("bool") else int if _text.startswith("int")
                               else float if _text.startswith("float") else str)


def _typed(value: Any, kind: type, where: str) -> Any:
    """TOML already typed the value; check it is the field's type (an int is a fine float)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    raise ConfigError(f"{where} must be {names[kind]}, got {value!r}")
