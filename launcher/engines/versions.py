"""Which engine releases we have facts for, mapping any other release to the nearest one, and detection."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from launcher.engines.errors import PlanError
from launcher.engines.flags import flag_files

ENGINES = ("vllm", "sglang", "sim")
_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(?:[.\-]?(post|rc|dev|a|b)(\d*))?(?:\+[\w.]+)?$")


def version_key(version: str) -> tuple[int, ...]:
    """Sortable numbers of a release string ('0.4.4.post1' → (0, 4, 4, 1); '0.32.0+cpu' → (0, 32, 0, 0))."""
    m = _VERSION.match(version.strip())
    if not m:
        raise PlanError(f"cannot read engine version {version!r}; give it like 0.8.2 or 0.4.5")
    nums = tuple(int(x) for x in m.group(1).split("."))
    nums = (nums + (0, 0, 0))[:3]
    post = int(m.group(3) or 0) if m.group(2) == "post" else 0
    return (*nums, post)


def known_versions(engine: str) -> list[str]:
    """Releases we hold flag data for, oldest first (``sim`` has none: it is ours)."""
    if engine not in ENGINES:
        raise PlanError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    prefix = f"flags-{engine}-"
    found = [n[len(prefix) : -len(".json")] for n in flag_files() if n.startswith(prefix)]
    return sorted(found, key=version_key)


@dataclass(frozen=True)
class ResolvedVersion:
    """A requested release and the known release whose facts stand in for it."""

    requested: str
    data: str
    note: str | None


def resolve_version(engine: str, version: str) -> ResolvedVersion:
    """Map a release to the known release with the closest (major, minor, patch).

    A release between two known ones borrows the facts of the nearer one and the
    plan says so: e.g. the CPU build vLLM 0.32.0 uses 0.33.0's flags, while 0.9.2
    would use 0.8.2's.
    """
    known = known_versions(engine)
    if not known:
        raise PlanError(f"{engine} has no version data")
    clean = version.strip().lstrip("v")
    want = version_key(clean)
    base = clean.split("+")[0]
    if base in known:
        return ResolvedVersion(clean, base, None)

    def distance(k: str) -> tuple:
        have = version_key(k)
        return tuple(abs(a - b) for a, b in zip(want, have, strict=True))

    best = min(known, key=lambda k: (distance(k), version_key(k)))
    note = (
        f"{engine} {clean} is not a release we hold flag data for; "
        f"checking flags against the nearest known release {best} (known: {', '.join(known)})"
    )
    return ResolvedVersion(clean, best, note)


def _python_near(engine_bin: str) -> str | None:
    """The interpreter that runs a console script: its shebang, else bin/python beside it."""
    path = Path(engine_bin)
    try:
        with path.open("rb") as fh:
            first = fh.readline(512).decode("utf-8", "replace")
        if first.startswith("#!"):
            cand = first[2:].strip().split()[0]
            if Path(cand).name.startswith("python") and Path(cand).exists():
                return cand
    except OSError:
        pass
    for name in ("python", "python3"):
        sibling = path.parent / name
        if sibling.exists():
            return str(sibling)
    return None


def detect_version(engine: str, python: str | None = None, engine_bin: str | None = None, timeout: float = 30.0) -> str | None:
    """The installed engine's release, asked from the interpreter that would run it; None when unknown.

    Only package metadata is read (no import of the engine), so it works without
    a GPU and takes well under a second.
    """
    if engine == "sim":
        from launcher import __version__

        return __version__
    package = {"vllm": "vllm", "sglang": "sglang"}.get(engine)
    if package is None:
        return None
    interp = python or (_python_near(engine_bin) if engine_bin else None)
    if interp is None:
        interp = shutil.which("python3")
    if interp is None:
        return None
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    try:
        done = subprocess.run(
            [interp, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    out = done.stdout.strip().splitlines()
    return out[-1].strip() if out else None
