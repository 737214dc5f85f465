"""The one error type the workload layer raises for bad input."""

from __future__ import annotations

from loadgen.errors import LoadgenError


class WorkloadError(LoadgenError, ValueError):
    """Bad workload input. The message is one line: what is wrong and how to fix it."""

    kind = "workload"
