"""Check command lines with an engine's own argument parser, in the engine's own venv.

Our flag data re-implements the engines' parsers; this module is the cross-check
against the real thing. The engine stays in its venv (vLLM pins its own torch,
SGLang needs GPU packages we never install); we run ``_real_parser_probe.py``
with that venv's interpreter and read JSON back. Nothing here imports an engine.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import LauncherError

PROBE = Path(__file__).with_name("_real_parser_probe.py")


class RealParserError(LauncherError, RuntimeError):
    """The engine's parser could not be built or run (missing venv, broken install)."""


@dataclass(frozen=True)
class ParseResult:
    """One argv through the real parser: accepted or not, its error line, and the parsed values."""

    argv: tuple[str, ...]
    ok: bool
    error: str | None
    args: dict


def venv_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def run_real_parser(engine: str, python: Path | str, argvs: Sequence[Sequence[str]], timeout: float = 180.0) -> list[ParseResult]:
    """Parse each argv (engine flags only, no program name) with the real parser; one process for all."""
    if engine not in ("vllm", "sglang"):
        raise RealParserError(f"no real parser for engine {engine!r}")
    if not Path(python).exists():
        raise RealParserError(f"{python} does not exist; install the engine's venv first")
    payload = json.dumps([list(a) for a in argvs])
    try:
        done = subprocess.run(
            [str(python), "-I", str(PROBE), engine],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise RealParserError(f"the {engine} parser did not answer within {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RealParserError(f"the {engine} parser failed to load: {tail}")
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise RealParserError(f"the {engine} parser printed no result") from None
    return [
        ParseResult(tuple(argv), bool(r["ok"]), r.get("error"), dict(r.get("args") or {}))
        for argv, r in zip(argvs, data["results"], strict=True)
    ]


def dump_flags(engine: str, python: Path | str, timeout: float = 240.0) -> dict:
    """Read every flag of the installed engine's parser, in our data format (to add a release)."""
    try:
        done = subprocess.run(
            [str(python), "-I", str(PROBE), engine, "dump"], input="[]", capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise RealParserError(f"the {engine} parser did not answer within {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RealParserError(f"the {engine} parser failed to load: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def flag_data_file(engine: str, dumped: dict, underscores: str) -> str:
    """The text of a ``flags-<engine>-<version>.json`` file, one flag per line."""
    version = dumped["version"].split("+")[0]
    head = {
        "engine": engine,
        "version": version,
        "source": f"{engine} {dumped['version']} server parser, read from the installed release",
        "underscores": underscores,
        "abbreviations": True,
    }
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()] + [' "flags": {']
    items = list(dumped["flags"].items())
    for i, (name, entry) in enumerate(items):
        lines.append(f"  {json.dumps(name)}: {json.dumps(entry)}" + ("," if i < len(items) - 1 else ""))
    return "\n".join(lines + [" }", "}", ""])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m launcher.engines.real_parser dump --engine vllm --python .venv-vllm/bin/python``."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m launcher.engines.real_parser")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="print the installed release's flags as a launcher data file")
    d.add_argument("--engine", choices=["vllm", "sglang"], required=True)
    d.add_argument("--python", required=True, help="the interpreter of the venv the engine is installed in")
    ns = ap.parse_args(argv)
    try:
        dumped = dump_flags(ns.engine, ns.python)
    except RealParserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rule = "rewrite_before_dot" if ns.engine == "vllm" else "reject"
    sys.stdout.write(flag_data_file(ns.engine, dumped, rule))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
