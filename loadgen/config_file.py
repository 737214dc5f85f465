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
from pathlib import Path
from typing import Any

from loadgen.config import PARTS, ConfigError, RunConfig
from loadgen.options import BY_FIELD, FORM, MOVED, SECRETS, SESSIONS, TOP_LEVEL

# Session options are written only in a session run's file.
SESSION_FIELDS = frozenset(field for field, o in BY_FIELD.items() if o.group == SESSIONS)


def to_form(cfg: RunConfig) -> dict[str, Any]:
    """The configuration in its file form (no secrets; unset options left out)."""
    flat = cfg.flat()
    out: dict[str, Any] = {key: flat[name] for key, name in TOP_LEVEL.items()}
    for section, keys in FORM.items():
        values: dict[str, Any] = {}
        for key, name in keys.items():
            value = _file_value(name, flat[name])
            if value is None or value == [] or value == {}:
                continue
            if name in SESSION_FIELDS and flat["dataset"] != "sessions":
                continue  # session options only in a session run's file
            values[key] = value
        out[section] = values
    return out


def _file_value(name: str, value: Any) -> Any:
    to_file = BY_FIELD[name].to_file
    if to_file is not None:
        return to_file(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def flat_from_form(form: Any, source: str) -> dict[str, Any]:
    """A file form → flat RunConfig fields, every key and type checked (one-line ConfigError)."""
    if not isinstance(form, dict):
        raise ConfigError(f"--config {source}: not a table of sections; see docs/loadgen.md for the form")
    flat: dict[str, Any] = {}
    for section, values in form.items():
        if section in TOP_LEVEL:
            flat[TOP_LEVEL[section]] = _read_value(TOP_LEVEL[section], values, f"--config {source}: {section}")
            continue
        if section in SECRETS:
            raise ConfigError(_secret_message(source, section))
        if section not in FORM:
            raise ConfigError(f"--config {source}: unknown section or key '{section}'; "
                              f"use {', '.join(TOP_LEVEL)} and [{'], ['.join(FORM)}]")
        if not isinstance(values, dict):
            raise ConfigError(f"--config {source}: '{section}' must be a table ([{section}])")
        for key, value in values.items():
            where = f"--config {source}: [{section}] {key}"
            if key in SECRETS:
                raise ConfigError(_secret_message(source, key))
            name = FORM[section].get(key) or MOVED.get((section, key))
            if name is None:
                raise ConfigError(f"{where} is unknown; [{section}] takes {', '.join(FORM[section])}")
            flat[name] = _read_value(name, value, where)
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


def _read_value(name: str, value: Any, where: str) -> Any:
    """A file value → the field's: through the option's parser when the file's shape differs
    (lists, tables), else checked against the field's type."""
    option = BY_FIELD[name]
    if option.file_shape is None:
        return _typed(value, _FIELD_TYPES[name], where)
    try:
        shaped = option.file_shape(value)
        return option.parse(shaped) if option.parse is not None else shaped
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _secret_message(source: str, key: str) -> str:
    return (f"--config {source}: '{key}' is a secret and is never read from a file; pass --api-key "
            "(or set $OPENAI_API_KEY), or put the credentials in --base-url")


_FIELD_TYPES: dict[str, type] = {"seed": int}
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
