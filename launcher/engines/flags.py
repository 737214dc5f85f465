"""Engine flag sets as data, a parser that checks argv against them, and rendering across releases.

The engines' own parsers cannot be imported here (they need torch and GPUs), yet a
wrong flag must be caught before an hour-long model load. So each release's flag
set is kept as data (``data/flags-<engine>-<version>.json``) and this module
re-implements the few argparse rules the engines rely on: long-option prefix
abbreviation, vLLM's ``_``→``-`` rewrite, ``--x/--no-x`` and enable/disable pairs,
``=value`` forms, ``nargs`` and enforced choices. Parsing yields neutral
``ParsedOpt`` values; rendering turns one into the spelling another release accepts.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from launcher.engines.errors import PlanError

BOOL_KINDS = frozenset({"flag", "bool_optional", "enable_disable"})
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
_HUMAN_INT = re.compile(r"^\d+(\.\d+)?[kKmMgGtT]?$")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


@dataclass(frozen=True)
class Flag:
    """One option of one release's server parser."""

    name: str
    kind: str  # value | append | flag | bool_optional | enable_disable | store_boolean | positional
    aliases: tuple[str, ...] = ()
    type: str = "str"  # str | int | float | json | human_int | human_int_or_auto
    nargs: str | None = None
    choices: tuple[str, ...] | None = None
    choices_enforced: bool = True
    default: Any = None
    deprecated: bool = False

    @property
    def is_bool(self) -> bool:
        return self.kind in BOOL_KINDS or self.kind == "store_boolean"


@dataclass(frozen=True)
class ParsedOpt:
    """One option as a parser understood it: which flag, which value, how it was spelled.

    ``value`` is a bool for boolean flags, a list of strings for ``nargs='+'/'*'``
    or repeated ``append`` flags, and a string otherwise.
    """

    flag: Flag
    value: bool | str | list[str]
    spelled: str


@dataclass
class FlagSet:
    """Every server flag of one engine release, with the lookups a parser needs."""

    engine: str
    version: str
    underscores: str  # rewrite | rewrite_before_dot | reject
    abbreviations: bool
    flags: dict[str, Flag]
    _spellings: dict[str, tuple[Flag, bool | None]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for flag in self.flags.values():
            if flag.kind == "positional":
                continue
            for spelling, polarity in _spellings_of(flag):
                self._spellings.setdefault(spelling, (flag, polarity))

    @property
    def label(self) -> str:
        return f"{self.engine} {self.version}"

    @property
    def positional(self) -> Flag | None:
        return next((f for f in self.flags.values() if f.kind == "positional"), None)

    def spellings(self) -> list[str]:
        return list(self._spellings)

    def lookup(self, spelling: str) -> tuple[Flag, bool | None] | None:
        """Exact spelling (after the release's underscore rule) → flag and the bool it sets."""
        return self._spellings.get(self.normalise(spelling))

    def normalise(self, key: str) -> str:
        """Apply the release's underscore rule to an option name (vLLM rewrites, SGLang does not)."""
        if not key.startswith("--"):
            return key
        if self.underscores == "rewrite":
            return key.replace("_", "-")
        if self.underscores == "rewrite_before_dot":
            head, dot, tail = key.partition(".")
            return head.replace("_", "-") + dot + tail
        return key

    def resolve(self, key: str) -> tuple[Flag, bool | None, str]:
        """Find the flag an option name means, as the release's parser would, or raise PlanError.

        Returns (flag, polarity, matched spelling). Prefix abbreviations are
        resolved the argparse way: one candidate wins, several are ambiguous.
        """
        norm = self.normalise(key)
        hit = self._spellings.get(norm)
        if hit:
            return hit[0], hit[1], norm
        base = norm.partition(".")[0] if self.underscores == "rewrite_before_dot" else norm
        if base != norm and base in self._spellings and self._spellings[base][0].type == "json":
            flag, polarity = self._spellings[base]
            return flag, polarity, norm
        if self.abbreviations and norm.startswith("--"):
            matches = [s for s in self._spellings if s.startswith(norm)]
            flags = {self._spellings[s][0].name for s in matches}
            if len(flags) == 1:
                return (*self._spellings[matches[0]], matches[0])
            if len(flags) > 1:
                listed = ", ".join(sorted(matches)[:6])
                raise PlanError(f"{key} is ambiguous for {self.label} (could be {listed}); spell the flag out in full")
        raise PlanError(f"unknown flag {key} for {self.label}{self.suggest(key)}")

    def suggest(self, key: str) -> str:
        """A ' (did you mean ...?)' hint, or '' when nothing is close."""
        norm = self.normalise(key).replace("_", "-")
        close = difflib.get_close_matches(norm, self.spellings(), n=3, cutoff=0.75)
        return f" (did you mean {' or '.join(close)}?)" if close else ""


def _spellings_of(flag: Flag) -> list[tuple[str, bool | None]]:
    """Every spelling that selects this flag, with the bool it sets (None for value flags)."""
    names = [flag.name, *flag.aliases]
    if flag.kind == "flag":
        return [(n, True) for n in names]
    if flag.kind not in ("bool_optional", "enable_disable"):
        return [(n, None) for n in names]
    out: list[tuple[str, bool | None]] = []
    positive = flag.name
    for n in names:
        if n == positive:
            out.append((n, True))
        elif n.startswith("--no-") or (positive.startswith("--enable-") and n.startswith("--disable-")):
            out.append((n, False))
        else:
            out.append((n, True))
    if flag.kind == "enable_disable" or (flag.kind == "bool_optional" and "--no-" + positive[2:] not in names):
        # argparse BooleanOptionalAction and vLLM's EnableDisableAction both accept --no-<spelling>.
        for n, pol in list(out):
            if n.startswith("--") and not n.startswith("--no-"):
                out.append(("--no-" + n[2:], not pol))
    return out


def _flag_from_data(name: str, d: dict) -> Flag:
    return Flag(
        name=name,
        kind=d["kind"],
        aliases=tuple(d.get("aliases", ())),
        type=d.get("type", "str"),
        nargs=d.get("nargs"),
        choices=tuple(d["choices"]) if d.get("choices") else None,
        choices_enforced=d.get("choices_enforced", True),
        default=d.get("default"),
        deprecated=d.get("deprecated", False),
    )


def data_text(filename: str) -> str:
    """A data file shipped in launcher/engines/data (package data, so it works when installed)."""
    return resources.files("launcher.engines").joinpath("data", filename).read_text(encoding="utf-8")


def data_json(filename: str) -> dict:
    return json.loads(data_text(filename))


def flag_files() -> list[str]:
    return sorted(
        p.name
        for p in resources.files("launcher.engines").joinpath("data").iterdir()
        if p.name.startswith("flags-") and p.name.endswith(".json")
    )


@cache
def load_flagset(engine: str, version: str) -> FlagSet:
    """The flag set of one known release (``version`` must be a known one; see versions.py)."""
    try:
        d = data_json(f"flags-{engine}-{version}.json")
    except FileNotFoundError:
        raise PlanError(f"no flag data for {engine} {version}") from None
    flags = {name: _flag_from_data(name, fd) for name, fd in d["flags"].items()}
    return FlagSet(
        engine=d["engine"],
        version=d["version"],
        underscores=d.get("underscores", "reject"),
        abbreviations=d.get("abbreviations", True),
        flags=flags,
    )


def _is_option(token: str) -> bool:
    return token.startswith("-") and token != "-" and not _NEGATIVE_NUMBER.match(token)


def check_value(flagset: FlagSet, flag: Flag, value: str) -> None:
    """Reject what the release's parser would reject: bad ints/floats and values outside enforced choices."""
    where = f"{flag.name} (for {flagset.label})"
    if flag.type == "int":
        try:
            int(value)
        except ValueError:
            raise PlanError(f"{where} expects an integer, got {value!r}") from None
    elif flag.type == "float":
        try:
            float(value)
        except ValueError:
            raise PlanError(f"{where} expects a number, got {value!r}") from None
    elif flag.type in ("human_int", "human_int_or_auto"):
        ok = _HUMAN_INT.match(value) or (flag.type == "human_int_or_auto" and value in ("auto", "-1"))
        if not ok:
            raise PlanError(f"{where} expects an integer such as 4096 or 4k, got {value!r}")
    if flag.choices and flag.choices_enforced and value not in flag.choices:
        close = difflib.get_close_matches(value, flag.choices, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else f" (choose from {', '.join(flag.choices[:12])})"
        raise PlanError(f"invalid value {value!r} for {where}{hint}")


def parse_bool(flagset: FlagSet, flag: Flag, text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise PlanError(f"{flag.name} (for {flagset.label}) expects true or false, got {text!r}")


def parse_args(flagset: FlagSet, argv: Sequence[str], *, allow_positional: bool = False) -> list[ParsedOpt]:
    """Parse engine flags the way the release's parser would; PlanError on the first problem.

    ``allow_positional`` lets a lone value fill the release's positional slot
    (vLLM's ``serve MODEL``); otherwise a stray value is an error, which is what
    catches ``--enable-chunked-prefill False`` on vLLM 0.33 (the ``False`` would
    silently become the model name there).
    """
    out: list[ParsedOpt] = []
    argv = list(argv)
    i = 0
    positional_used = False
    while i < len(argv):
        tok = argv[i]
        i += 1
        if not _is_option(tok):
            slot = flagset.positional
            if allow_positional and slot is not None and not positional_used:
                positional_used = True
                out.append(ParsedOpt(slot, tok, tok))
                continue
            prev = f" after {argv[i - 2]}" if i >= 2 else ""
            raise PlanError(f"unexpected value {tok!r}{prev} for {flagset.label}; flags that switch something on take no value there")
        key, eq, inline = tok.partition("=") if tok.startswith("--") or "=" in tok else (tok, "", "")
        flag, polarity, matched = flagset.resolve(key)
        if flag.kind in BOOL_KINDS:
            if eq:
                raise PlanError(
                    f"{tok}: {flagset.label} takes no value for {flag.name}"
                    f"{' (use --no-' + flag.name[2:] + ' to switch it off)' if flag.kind != 'flag' else ''}"
                )
            out.append(ParsedOpt(flag, bool(polarity), tok))
            continue
        if flag.kind == "store_boolean":
            if eq:
                text = inline
            elif i < len(argv) and not _is_option(argv[i]):
                text = argv[i]
                i += 1
            else:
                text = "true"
            out.append(ParsedOpt(flag, parse_bool(flagset, flag, text), tok))
            continue
        values: list[str] = []
        if eq:
            values.append(inline)
        if flag.nargs in ("+", "*"):
            while i < len(argv) and not _is_option(argv[i]):
                values.append(argv[i])
                i += 1
            if flag.nargs == "+" and not values:
                raise PlanError(f"{flag.name} (for {flagset.label}) expects at least one value")
        elif not eq:
            if i < len(argv) and not _is_option(argv[i]):
                values.append(argv[i])
                i += 1
            elif flag.nargs != "?":
                raise PlanError(f"{flag.name} (for {flagset.label}) expects a value")
        for v in values:
            check_value(flagset, flag, v)
        if flag.nargs in ("+", "*") or flag.kind == "append":
            value: bool | str | list[str] = values
        else:
            value = values[0] if values else ""
        name = matched if "." in matched else flag.name
        out.append(ParsedOpt(flag if name == flag.name else Flag(name, flag.kind, type="json"), value, tok))
    return out


def listed(value: bool | str | list[str]) -> list[str]:
    """The values of an ``append`` flag as a list (a single value is one item)."""
    return value if isinstance(value, list) else [str(value)]


def opts_to_dict(opts: Sequence[ParsedOpt]) -> dict[str, Any]:
    """Canonical name → final value (later wins, append/list values accumulate): what the engine will see."""
    out: dict[str, Any] = {}
    for o in opts:
        if o.flag.kind == "append" and o.flag.name in out:
            out[o.flag.name] = [*out[o.flag.name], *listed(o.value)]
        else:
            out[o.flag.name] = o.value
    return out


def render_opt(flag: Flag, value: bool | str | list[str], target: FlagSet, spelled: str | None = None) -> list[str]:
    """Spell one option so the target release's parser accepts it.

    Booleans become the spelling whose meaning is the value: the user's own
    spelling if the target still has it, else the flag's name, else ``--no-NAME``
    (vLLM 0.33 rejects ``--enable-chunked-prefill=False``; 0.8.2 needs it).
    """
    if flag.kind == "positional":
        return [str(value)]
    if isinstance(value, bool):
        if flag.kind == "store_boolean":
            return [flag.name] if value else [f"{flag.name}=False"]
        if flag.kind == "flag":
            return [flag.name] if value else []
        if flag.kind in ("bool_optional", "enable_disable"):
            if spelled:
                key = spelled.partition("=")[0]
                hit = target.lookup(key)
                if hit and hit[0].name == flag.name and hit[1] is value:
                    return [target.normalise(key)]
            if value:
                return [flag.name]
            return ["--no-" + flag.name[2:]]
        return [flag.name, "true" if value else "false"]
    if isinstance(value, list):
        if flag.kind == "append":
            out: list[str] = []
            for v in value:
                out += [flag.name, v]
            return out
        return [flag.name, *value]
    if value == "" and flag.nargs == "?":
        return [flag.name]
    return [flag.name, value]
