"""sim: our own engine emulator, started with the same interpreter as the launcher."""

from __future__ import annotations

import sys
from collections.abc import Sequence

NAME = "sim"


def argv(host: str, port: int, extra: Sequence[str] = (), python: str | None = None) -> list[str]:
    """The emulator's command line; its own flags pass through unchanged (it validates them itself)."""
    return [python or sys.executable, "-m", "launcher.sim", "--host", host, "--port", str(port), *extra]


def extra_env(environ: dict[str, str], host_facts: tuple[str, str] | None = None) -> dict[str, str]:
    return {}
