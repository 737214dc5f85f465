"""The one error type of command planning."""

from __future__ import annotations

from launcher.errors import LauncherError


class PlanError(LauncherError, ValueError):
    """A plan cannot be built; the message is one line naming the problem and the fix.

    It derives from ValueError so that callers that only know "bad input" still
    catch it; the CLI turns it into a usage error (exit code 2).
    """
