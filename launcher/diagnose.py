"""Explain a failed (or limping) server start from its log.

A DeepSeek-R1 start can fail an hour in, after the last of 163 shards is loaded,
and the useful line is buried under thousands of lines of tracebacks. The
signatures live in ``engines/data/failure-signatures.json`` so that a new failure
is one data entry, not new code. The same matcher runs on a finished log file
(``loadgen-launch diagnose``) and incrementally on a live log while waiting for
readiness (:class:`LogScanner`), so a fatal line stops the wait at once.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from launcher.redact import mask_text

DATA_FILE = Path(__file__).parent / "engines" / "data" / "failure-signatures.json"
FAILING_KINDS = ("fatal", "wrapper")


@dataclass(frozen=True)
class Signature:
    id: str
    engines: tuple[str, ...]
    kind: str  # fatal | wrapper | warning | info
    phase: str
    regex: re.Pattern[str]
    what: str
    fix: str
    refs: tuple[str, ...] = ()
    context: re.Pattern[str] | None = None


@dataclass(frozen=True)
class Finding:
    """One signature that matched, with where it matched."""

    signature: Signature
    line_no: int  # 1-based
    line: str

    def describe(self) -> str:
        """One line: what happened, the usual fix, and the references."""
        sig = self.signature
        refs = f" (see {', '.join(sig.refs)})" if sig.refs else ""
        return f"{sig.what} [{sig.id}, line {self.line_no}] — fix: {sig.fix}{refs}"


@dataclass
class Diagnosis:
    findings: list[Finding] = field(default_factory=list)

    @property
    def root_cause(self) -> Finding | None:
        """The first fatal finding; a wrapper only when nothing more specific matched.

        Wrappers ("engine core died") come after the real error, so reporting the
        first fatal line is the one that names the fix.
        """
        for f in self.findings:
            if f.signature.kind == "fatal":
                return f
        for f in self.findings:
            if f.signature.kind == "wrapper":
                return f
        return None

    @property
    def failed(self) -> bool:
        return self.root_cause is not None

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.signature.kind not in FAILING_KINDS]

    def summary(self) -> str:
        root = self.root_cause
        return root.describe() if root else "no known failure signature in the log"


@functools.lru_cache(maxsize=4)
def load_signatures(path: str | None = None) -> tuple[Signature, ...]:
    data = json.loads(Path(path or DATA_FILE).read_text(encoding="utf-8"))
    out = []
    for raw in data["signatures"]:
        out.append(
            Signature(
                id=raw["id"],
                engines=tuple(raw.get("engines", ())),
                kind=raw["kind"],
                phase=raw.get("phase", ""),
                regex=re.compile(raw["regex"]),
                what=raw["what"],
                fix=raw["fix"],
                refs=tuple(raw.get("refs", ())),
                context=re.compile(raw["context"]) if raw.get("context") else None,
            )
        )
    return tuple(out)


class LogScanner:
    """Feed it lines in order; it remembers context and yields findings.

    One finding per signature id (the first occurrence): a log that repeats the
    same OOM on eight ranks is one problem, not eight.
    """

    def __init__(self, engine: str | None = None, signatures: Iterable[Signature] | None = None) -> None:
        sigs = tuple(signatures) if signatures is not None else load_signatures()
        self._sigs = [s for s in sigs if engine is None or not s.engines or engine in s.engines]
        self._context_seen: set[str] = set()
        self._seen_ids: set[str] = set()
        self.line_no = 0
        self.diagnosis = Diagnosis()

    def feed(self, line: str) -> Finding | None:
        """Scan one line; return the finding it produced, if any."""
        self.line_no += 1
        for sig in self._sigs:
            if sig.context is not None and sig.context.search(line):
                self._context_seen.add(sig.id)
        for sig in self._sigs:
            if sig.context is not None and sig.id not in self._context_seen:
                continue
            if sig.regex.search(line):
                # A line that matches a specific entry is not matched again by a generic one.
                if sig.id in self._seen_ids:
                    return None
                self._seen_ids.add(sig.id)
                found = Finding(sig, self.line_no, line.strip()[:400])
                self.diagnosis.findings.append(found)
                return found
        return None


def split_log_lines(text: str) -> list[str]:
    """Lines as a person reads them: tqdm progress bars rewrite a line with ``\\r``."""
    return [part for line in text.splitlines() for part in line.split("\r")]


def diagnose_text(text: str, engine: str | None = None) -> Diagnosis:
    scanner = LogScanner(engine)
    for line in split_log_lines(text):
        scanner.feed(line)
    return scanner.diagnosis


def diagnose_file(path: Path, engine: str | None = None, start: int = 0) -> Diagnosis:
    """Diagnose a log file from byte ``start`` (where one run's output begins) to its end."""
    with open(path, "rb") as fh:
        fh.seek(start)
        return diagnose_text(fh.read().decode("utf-8", errors="replace"), engine)


ERROR_LINE = re.compile(r"(\b\w*(Error|Exception)\b|Value error|\berror:|\bERROR\b|Traceback)")


def last_error_line(path: Path, max_bytes: int = 65536, start: int = 0) -> str | None:
    """The last line of the log's tail that reads like an error (for a failure without a known signature).

    The very last line is often a footer ("For further information visit ..."),
    so the last error-looking line is the more useful one to show.
    """
    lines = last_lines(path, n=200, max_bytes=max_bytes, start=start)
    for line in reversed(lines):
        if ERROR_LINE.search(line) and not line.startswith("Traceback"):
            return line
    return lines[-1] if lines else None


def last_lines(path: Path, n: int = 5, max_bytes: int = 65536, start: int = 0) -> list[str]:
    """The last non-empty lines of a log, for a failure without a known signature."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(start, size - max_bytes))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = [ln.strip() for ln in split_log_lines(tail) if ln.strip()]
    return [mask_text(ln) for ln in lines[-n:]]  # shown on a terminal: a key the engine echoed stays hidden
