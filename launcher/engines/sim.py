"""sim: our own engine emulator, started with the same interpreter as the launcher."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from launcher.engines.errors import PlanError

NAME = "sim"


def argv(host: str, port: int, extra: Sequence[str] = (), python: str | None = None) -> list[str]:
    """The emulator's command line; its own flags pass through unchanged (see :func:`check_args`).

    ``-P`` (Python 3.11+): the working directory is not put on ``sys.path``, so a
    folder named ``launcher`` where the user stands cannot shadow our package.
    """
    return [python or sys.executable, "-P", "-m", "launcher.sim", "--host", host, "--port", str(port), *extra]


def check_args(extra: Sequence[str]) -> None:
    """Refuse flags the sim would refuse, before anything starts, naming the flag (and the likely one)."""
    from launcher.sim.server import check_argv

    problem = check_argv(list(extra))
    if problem:
        raise PlanError(f"sim: {problem}")


def extra_env(environ: dict[str, str], host_facts: tuple[str, str] | None = None) -> dict[str, str]:
    return {}
