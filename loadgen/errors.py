"""The one base of every error loadgen raises on purpose.

Each error carries a ``kind`` (a short word such as ``connect``, ``http_503``,
``timeout``, ``option``) so that callers decide by kind, never by searching the
message; the message itself is one line naming the problem and the fix.
"""

from __future__ import annotations


class LoadgenError(Exception):
    """Base of loadgen's own errors: ``kind`` for code, the message for people."""

    kind: str = "error"

    def __init__(self, message: str = "", kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# Request error kinds (RequestRecord.error) worth another try: the server or the
# network failed this once, not the configuration.
TRANSIENT_KINDS = ("timeout", "malformed", "http_429")


def is_transient(kind: str) -> bool:
    """Whether a request that failed with ``kind`` may succeed when sent again."""
    return kind in TRANSIENT_KINDS or kind.startswith(("http_5", "reset"))
