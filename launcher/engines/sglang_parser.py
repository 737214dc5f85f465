"""SGLang's real argument parser in a side venv, to check our SGLang command lines here.

SGLang cannot run on this machine (its kernels are CUDA-only), but its parser is
plain Python. ``pip install --no-deps sglang==VERSION`` into ``.venv-sglang`` is
enough: the probe replaces the GPU packages ``server_args`` imports with inert
stand-ins, so only SGLang's own flag definitions are exercised (newer releases
also need msgspec and typing_extensions, installed alongside). Install takes a
few seconds.

    python -m launcher.engines.sglang_parser install [--version 0.4.5] [--venv PATH]
    python -m launcher.engines.sglang_parser check -- --model-path /m --tp-size 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from launcher.engines.real_parser import ParseResult, RealParserError, run_real_parser, venv_python
from launcher.paths import project_root

DEFAULT_VERSION = "0.4.5"  # the release closest to the field report's image ea52b45be1a7
# Newer releases build their parser from msgspec records with typing_extensions
# annotations; both are small and have no dependencies of their own.
PARSER_DEPS = ("typing_extensions", "msgspec")



def default_venv() -> Path:
    return Path(os.environ.get("LOADGEN_SGLANG_VENV") or project_root() / ".venv-sglang")


def installed_version(venv: Path | None = None) -> str | None:
    """The SGLang release in the side venv, from its dist-info (no interpreter started)."""
    venv = venv or default_venv()
    for dist in sorted((Path(venv) / "lib").glob("python3*/site-packages/sglang-*.dist-info")):
        return dist.name[len("sglang-") : -len(".dist-info")]
    return None


def install(version: str = DEFAULT_VERSION, venv: Path | None = None, python: str = sys.executable) -> Path:
    """Create the side venv and install SGLang without dependencies; idempotent."""
    venv = Path(venv or default_venv())
    if installed_version(venv) == version:
        return venv
    if not venv_python(venv).exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [str(venv_python(venv)), "-m", "pip", "install", "-q", "--no-deps", f"sglang=={version}", *PARSER_DEPS],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise RealParserError(f"pip install --no-deps sglang=={version} failed: {tail}")
    return venv


def check(argvs: Sequence[Sequence[str]], venv: Path | None = None) -> list[ParseResult]:
    """Each argv (flags after ``python -m sglang.launch_server``) through SGLang's parser."""
    return run_real_parser("sglang", venv_python(Path(venv or default_venv())), argvs)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher.engines.sglang_parser", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_install = sub.add_parser("install", help="create the side venv with SGLang (no dependencies)")
    p_install.add_argument("--version", default=DEFAULT_VERSION)
    p_install.add_argument("--venv", type=Path, default=None)
    p_check = sub.add_parser("check", help="parse the flags after -- with SGLang's parser")
    p_check.add_argument("--venv", type=Path, default=None)
    p_check.add_argument("flags", nargs=argparse.REMAINDER)
    ns = ap.parse_args(argv)
    try:
        if ns.cmd == "install":
            venv = install(ns.version, ns.venv)
            print(f"sglang {installed_version(venv)} parser ready in {venv}")
            return 0
        flags = ns.flags[1:] if ns.flags[:1] == ["--"] else ns.flags
        (result,) = check([flags], ns.venv)
    except RealParserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("accepted" if result.ok else f"rejected: {result.error}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
