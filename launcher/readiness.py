"""When is a server ready, and what is it doing meanwhile?

Each engine says "ready" differently, and some say it falsely: SGLang 0.4.x
answers ``/health`` with 200 as soon as uvicorn is up, before warm-up, and vLLM
refuses connections until the model is loaded. So readiness is per engine and
version (from the plan): an HTTP probe that means something, or the engine's own
"ready" log line followed by a probe. While waiting we tail the log for the phase,
shard-loading progress, and fatal signatures, so a failure ends the wait at once
instead of at the timeout.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.diagnose import Finding, LogScanner
from launcher.engines.base import ReadinessSpec
from launcher.errors import LauncherError

__all__ = ["LogTail", "NotReady", "Progress", "ReadinessSpec", "Waiter", "http_status", "parse_progress"]


@dataclass
class Progress:
    """What the log says so far; handed to ``on_progress`` whenever it changes."""

    phase: str = "starting"
    percent: float | None = None
    shards_done: int | None = None
    shards_total: int | None = None
    elapsed_s: float = 0.0
    last_line: str = ""

    def describe(self) -> str:
        text = f"[{self.elapsed_s:6.1f}s] {self.phase}"
        if self.shards_total and self.phase in ("loading weights", "weights loaded"):
            text += f" {self.shards_done}/{self.shards_total} shards"
        if self.percent is not None:
            text += f" ({self.percent:.0f}%)"
        return text


# Phase markers, in start-up order, for vLLM, SGLang and the sim. The first
# regex that matches a line moves the phase forward (never back).
PHASES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx))
    for name, rx in (
        ("parsing arguments", r"(vLLM API server version|non-default args|args: Namespace|server_args=ServerArgs)"),
        ("initialising devices", r"(Automatically detected platform|Init torch distributed begin|world_size=)"),
        ("loading weights", r"(Starting to load model|Load weight begin|Loading safetensors checkpoint shards|Loading weights)"),
        ("weights loaded", r"(Model loading took|Loading weights took|Load weight end)"),
        ("allocating KV cache", r"(GPU KV cache size|CPU KV cache size|# (cuda|cpu) blocks|Memory pool end|max_total_num_tokens=|KV cache size)"),
        ("capturing graphs", r"(Capturing (CUDA graph shapes|cudagraphs)|Capture cuda graph begin)"),
        ("warming up", r"(init engine \(profile, create kv cache, warmup model\) took|Uvicorn running on|Capture cuda graph end)"),
        ("serving", r"(Starting vLLM (API )?server( \d+)? on|The server is fired up and ready to roll|Application startup complete)"),
    )
)
# vLLM: "Loading safetensors checkpoint shards:  45% Completed | 73/163 [..]";
# plain tqdm: "...:  45%|████      | 73/163 [..]"; SGLang 0.4: "...: 73/163".
SHARD_RE = re.compile(r"Loading safetensors checkpoint shards:\s*(?:(\d+)%[^/\d]*)?(\d+)/(\d+)")


def parse_progress(line: str, progress: Progress) -> bool:
    """Update ``progress`` from one log line; True when something changed."""
    changed = False
    m = SHARD_RE.search(line)
    if m:
        done, total = int(m.group(2)), int(m.group(3))
        pct = float(m.group(1)) if m.group(1) else (100.0 * done / total if total else None)
        if (done, total, pct) != (progress.shards_done, progress.shards_total, progress.percent):
            progress.shards_done, progress.shards_total, progress.percent = done, total, pct
            changed = True
    current = [name for name, _ in PHASES].index(progress.phase) if progress.phase in dict(PHASES) else -1
    for i, (name, rx) in enumerate(PHASES):
        if i > current and rx.search(line):
            progress.phase = name
            current = i
            changed = True
    return changed


class LogTail:
    """Incremental reader of a growing log: whole lines only, ``\\r`` treated as a line end."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = Path(path)
        self._offset = offset
        self._partial = ""

    def read_new(self, max_bytes: int = 4 << 20) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read(max_bytes)
        except FileNotFoundError:
            return []
        if not data:
            return []
        self._offset += len(data)
        text = self._partial + data.decode("utf-8", errors="replace")
        parts = re.split(r"\r\n|\r|\n", text)
        self._partial = parts.pop()
        return parts

    def flush(self) -> list[str]:
        rest, self._partial = self._partial, ""
        return [rest] if rest else []


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """Status code of a GET, or None when nothing answers (connection refused, reset, timeout)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


class NotReady(LauncherError):
    """The wait ended without readiness. ``reason`` is exited | fatal | timeout | interrupted."""

    def __init__(self, reason: str, message: str, finding: Finding | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.finding = finding
        self.exit_code = exit_code


@dataclass
class Waiter:
    """Poll log and HTTP until ready, or raise :class:`NotReady`.

    ``poll_exit`` returns the process's exit code or None while it runs (for
    Docker, the ``docker run`` client's).
    """

    base_url: str
    spec: ReadinessSpec
    log_path: Path
    poll_exit: Callable[[], int | None]
    engine: str | None = None
    on_progress: Callable[[Progress], Any] | None = None
    interval_s: float = 0.25
    log_offset: int = 0  # where this start's output begins in an appended-to log
    progress: Progress = field(default_factory=Progress)
    ready_line_seen: bool = False

    def __post_init__(self) -> None:
        self._tail = LogTail(self.log_path, self.log_offset)
        self._scanner = LogScanner(self.engine)
        self._ready_res = [re.compile(rx) for rx in self.spec.ready_log]

    @property
    def scanner(self) -> LogScanner:
        return self._scanner

    def _consume(self, lines: list[str]) -> Finding | None:
        fatal = None
        changed = False
        for line in lines:
            if not line.strip():
                continue
            self.progress.last_line = line.strip()[:200]
            found = self._scanner.feed(line)
            if found is not None and found.signature.kind == "fatal" and fatal is None:
                fatal = found
            if parse_progress(line, self.progress):
                changed = True
            if not self.ready_line_seen and any(rx.search(line) for rx in self._ready_res):
                self.ready_line_seen = True
        if changed and self.on_progress:
            self.on_progress(self.progress)
        return fatal

    def _root_cause(self) -> Finding | None:
        return self._scanner.diagnosis.root_cause

    def is_ready_now(self) -> bool:
        """The engine's real signal: the health path answers as expected.

        Where plain ``/health`` lies (SGLang 0.4.x) the plan's health path is a
        generating probe; the engine's own "ready" line, once seen, is accepted as
        soon as HTTP answers at all, as the engine itself vouches for warm-up.
        """
        url = self.base_url.rstrip("/") + self.spec.health_path
        status = http_status(url, timeout_s=5.0 if self.spec.health_meaningful else 25.0)
        if status == self.spec.expected_status:
            return True
        return status is not None and self.ready_line_seen and not self.spec.health_meaningful

    def wait(self, timeout_s: float) -> Progress:
        start = time.monotonic()
        deadline = start + timeout_s
        last_report = 0.0
        while True:
            now = time.monotonic()
            self.progress.elapsed_s = now - start
            fatal = self._consume(self._tail.read_new())
            if fatal is not None:
                raise NotReady("fatal", fatal.describe(), finding=fatal)
            code = self.poll_exit()
            if code is not None:
                fatal = self._consume(self._tail.read_new() + self._tail.flush()) or self._root_cause()
                raise NotReady("exited", f"the server exited with code {code} before it was ready", fatal, code)
            if self.is_ready_now():
                self._consume(self._tail.read_new())
                self.progress.phase = "ready"
                if self.on_progress:
                    self.on_progress(self.progress)
                return self.progress
            if now >= deadline:
                raise NotReady(
                    "timeout",
                    f"not ready after {timeout_s:.0f} s (phase: {self.progress.phase}); "
                    f"raise --ready-timeout for large models, or read the log",
                )
            if self.on_progress and now - last_report >= 10:
                last_report = now
                self.on_progress(self.progress)
            time.sleep(self.interval_s)
