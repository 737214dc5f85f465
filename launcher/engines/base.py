"""What every engine shares: its data file, readiness facts, and moving flags between releases.

Engine modules (vllm.py, sglang.py, sim.py) only say how their command line starts;
everything that changes between releases is read from ``data/engine-<name>.json``
and ``data/flags-<name>-<version>.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from launcher.engines.errors import PlanError
from launcher.engines.flags import (
    BOOL_KINDS,
    Flag,
    FlagSet,
    ParsedOpt,
    check_value,
    data_json,
    parse_bool,
)


@dataclass
class ReadinessSpec:
    """How to know a server is ready, for one engine release.

    ``health_meaningful`` is False where the health path answers 200 before the
    model can serve (SGLang 0.4.x ``/health``): a launcher must then wait for
    ``health_path`` (``/health_generate``) or a ``ready_log`` line instead.
    """

    health_path: str
    expected_status: int = 200
    health_meaningful: bool = True
    probe_paths: list[str] = field(default_factory=list)
    ready_log: list[str] = field(default_factory=list)
    weak_ready_log: list[str] = field(default_factory=list)
    progress_log: str | None = None
    note: str = ""

    @classmethod
    def from_data(cls, d: dict) -> ReadinessSpec:
        return cls(
            health_path=d["health_path"],
            expected_status=int(d.get("expected_status", 200)),
            health_meaningful=bool(d.get("health_meaningful", True)),
            probe_paths=list(d.get("probe_paths", [])),
            ready_log=list(d.get("ready_log", [])),
            weak_ready_log=list(d.get("weak_ready_log", [])),
            progress_log=d.get("progress_log"),
            note=d.get("note", ""),
        )


@cache
def engine_data(engine: str) -> dict:
    return data_json(f"engine-{engine}.json")


@cache
def cross_engine_data() -> dict:
    return data_json("cross-engine.json")


def version_facts(engine: str, version: str) -> dict:
    """The entry-point / readiness / memory-rule facts of one known release."""
    try:
        return engine_data(engine)["versions"][version]
    except KeyError:
        raise PlanError(f"no start-up facts for {engine} {version}") from None


def readiness_for(engine: str, version: str | None) -> ReadinessSpec:
    data = engine_data(engine)
    if engine == "sim" or version is None:
        return ReadinessSpec.from_data(data["readiness"])
    key = version_facts(engine, version)["readiness"]
    return ReadinessSpec.from_data(data["readiness"][key])


@dataclass
class Translated:
    """Options re-spelled for a target release, plus what had to be dropped and why."""

    opts: list[ParsedOpt]
    warnings: list[str]


def _find_in_target(name: str, aliases: Sequence[str], target: FlagSet) -> tuple[Flag, bool | None] | None:
    for spelling in (name, *aliases):
        hit = target.lookup(spelling)
        if hit:
            return hit
    return None


def _cross_pair(opt: ParsedOpt, source_engine: str, target_engine: str) -> dict | None:
    names = {opt.flag.name, *opt.flag.aliases}
    for pair in cross_engine_data()["pairs"]:
        if pair.get(source_engine) in names:
            return pair
    # The pair table uses current spellings; older releases reach it through the rename table.
    renames = {
        k: v["renamed_to"] for k, v in engine_data(source_engine).get("translations", {}).items() if "renamed_to" in v
    }
    for n in names:
        if n in renames:
            for pair in cross_engine_data()["pairs"]:
                if pair.get(source_engine) == renames[n]:
                    return pair
    return None


def _map_value(value: Any, pair: dict | None, source_engine: str, target_engine: str) -> Any:
    if pair is None:
        return value
    if isinstance(value, bool) and "bool_to_value" in pair and source_engine == "vllm":
        mapped = pair["bool_to_value"].get(str(value).lower())
        return mapped if mapped is not None else None
    if isinstance(value, str) and "value_to_bool" in pair and source_engine == "sglang":
        return pair["value_to_bool"].get(value, None)
    if isinstance(value, str) and "values" in pair:
        src, dst = pair["values"][source_engine], pair["values"][target_engine]
        if value in src:
            return dst[src.index(value)]
    return value


def translate(opts: Sequence[ParsedOpt], source: FlagSet, target: FlagSet, origin: str) -> Translated:
    """Re-express options parsed for one release (or engine) in another's flags.

    Flags the target still has are kept (re-spelled if needed); renamed flags
    follow the data's rename table; flags the target lacks are dropped with a
    warning that gives the reason from the data. Values the target would reject
    are an error, because silently changing a value changes the experiment.
    """
    rules = engine_data(source.engine).get("translations", {})
    cross = source.engine != target.engine
    out: list[ParsedOpt] = []
    warnings: list[str] = []
    for opt in opts:
        if opt.flag.kind == "positional":
            continue
        value: Any = opt.value
        if cross:
            pair = _cross_pair(opt, source.engine, target.engine)
            if pair is None:
                why = cross_engine_data().get("not_equivalent", {}).get(opt.flag.name, "no equivalent flag")
                warnings.append(f"dropped {opt.spelled} ({origin}): {target.engine} has no equivalent — {why}")
                continue
            hit = target.lookup(pair[target.engine])
            value = _map_value(value, pair, source.engine, target.engine)
            if value is None:
                warnings.append(f"dropped {opt.spelled} ({origin}): no {target.engine} spelling for this value")
                continue
        else:
            hit = _find_in_target(opt.flag.name, opt.flag.aliases, target)
            rule = rules.get(opt.flag.name, {})
            if hit is None and "renamed_to" in rule:
                hit = target.lookup(rule["renamed_to"])
                if hit is not None:
                    if rule.get("invert") and isinstance(value, bool):
                        value = not value  # e.g. --disable-x became --enable-x
                    warnings.append(f"renamed {opt.flag.name} → {hit[0].name} for {target.label} ({origin})")
        if hit is None:
            why = rules.get(opt.flag.name, {}).get("why")
            reason = f": {why}" if why else ""
            warnings.append(f"dropped {opt.spelled} ({origin}): not a flag of {target.label}{reason}")
            continue
        flag, polarity = hit
        if flag.kind in BOOL_KINDS or flag.kind == "store_boolean":
            if not isinstance(value, bool):
                value = parse_bool(target, flag, value if isinstance(value, str) else "true")
            if polarity is False:
                value = not value
            if flag.kind == "flag" and value is False and flag.default not in (False, None):
                warnings.append(f"dropped {opt.spelled} ({origin}): {target.label} cannot switch {flag.name} off")
                continue
        elif isinstance(value, bool):
            warnings.append(f"dropped {opt.spelled} ({origin}): {flag.name} takes a value in {target.label}")
            continue
        else:
            for v in value if isinstance(value, list) else [value]:
                try:
                    check_value(target, flag, v)
                except PlanError as exc:
                    raise PlanError(f"{exc} ({origin})") from None
        if flag.deprecated:
            warnings.append(f"{flag.name} is deprecated in {target.label} ({origin}); it still works")
        out.append(ParsedOpt(flag, value, opt.spelled))
    return Translated(out, warnings)


def entry_argv(engine: str, version: str, *, model: str, python: str | None, engine_bin: str | None) -> list[str]:
    """The start of the native command line: interpreter or console script, subcommand, model.

    Which form a release uses comes from the data: vLLM 0.8.2 was started as
    ``python3 -m vllm.entrypoints.openai.api_server --model M`` in the field
    report; current vLLM is ``vllm serve M``; SGLang is ``python3 -m
    sglang.launch_server --model-path M``. ``--python`` or ``--engine-bin`` pick
    the environment the engine lives in.
    """
    facts = version_facts(engine, version)
    if engine_bin and _looks_like_python(engine_bin):
        python, engine_bin = engine_bin, None
    if engine_bin:
        if not facts.get("bin"):
            raise PlanError(
                f"{engine} {version} has no console command to give --engine-bin; pass its interpreter with --python instead"
            )
        head, form = [engine_bin, *facts["bin"]], facts["model"]["bin"]
    elif python:
        head, form = [python, *facts["module"]], facts["model"]["module"]
    elif engine_data(engine)["default_entry"].get(version) == "bin" and facts.get("bin"):
        head, form = [engine, *facts["bin"]], facts["model"]["bin"]
    else:
        head, form = ["python3", *facts["module"]], facts["model"]["module"]
    if form == "positional":
        return [*head, model]
    return [*head, form, model]


def _looks_like_python(path: str) -> bool:
    from pathlib import Path

    return Path(path).name.startswith("python")
