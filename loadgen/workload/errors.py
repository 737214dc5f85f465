"""The one error type the workload layer raises for bad input."""

from __future__ import annotations


class WorkloadError(ValueError):
    """Bad workload input. The message is one line: what is wrong and how to fix it."""
