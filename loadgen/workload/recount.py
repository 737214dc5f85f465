"""The safety-net re-count of a prompt set, in a process of its own at idle priority.

A random set built from the stored piece table needs no tokenizer (see
:func:`loadgen.workload.build_prompts` with ``defer_check``), but every built set is
re-counted through the tokenizer's public API on a sample, and loading the tokenizer
costs ~0.45 s of CPU: most of a cold start. So the re-count runs beside the benchmark
instead of before it: a forked process at ``SCHED_IDLE`` priority (it gets the CPU only
when the client leaves it idle, and a waking client takes it back at once), which
loads the tokenizer, counts the same sample the in-line check would, and sends back
its verdict. The caller collects the verdict after a point's clock stops and records
it with the point; a disagreement is reported then (the figures per input token are
wrong) and the cached set and piece table are dropped so that the next build is
checked before its first request.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loadgen.records import Prompt

SHOWN = 5  # disagreements kept in the verdict


@dataclass(frozen=True)
class Verdict:
    """What the re-count found. ``done`` is False when it could not finish (stopped, or
    the tokenizer failed to load: ``error`` says why)."""

    done: bool
    checked: int = 0
    mismatched: int = 0
    examples: tuple[tuple[int, int, int], ...] = field(default=())  # (prompt id, built, counted)
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.done and self.mismatched == 0

    def as_dict(self) -> dict[str, Any]:
        """The form the result JSON keeps (``prompt_verification.local``)."""
        out: dict[str, Any] = {"checked": self.checked, "ok": self.ok, "background": True}
        if not self.done:
            out["done"], out["error"] = False, self.error
        if self.mismatched:
            out["mismatched"], out["examples"] = self.mismatched, [list(e) for e in self.examples]
        return out

    def message(self) -> str:
        pid, built, counted = self.examples[0]
        return (f"prompt lengths re-counted during the run disagree with the set: prompt {pid} was built as "
                f"{built} tokens and the tokenizer counts {counted} ({self.mismatched} of {self.checked} sampled "
                "prompts differ); the point's result says so (prompt_verification.local) and the cached set and "
                "piece table were removed: run again to build the set with a full check before the first request")


def _idle() -> None:
    """Run only when nothing else wants this CPU (threads started later inherit it)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _count(conn: Any, tokenizer_id: str, sample: Sequence[Prompt]) -> None:
    """The child: load the tokenizer, count the sample, send the verdict as JSON."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # a stop ends the child quietly; the parent decides
        signal.signal(sig, signal.SIG_DFL)
    _idle()
    started = time.perf_counter()
    try:
        from loadgen.workload import check_lengths
        from loadgen.workload.tokenizer import load_tokenizer

        bad = check_lengths(load_tokenizer(tokenizer_id), sample)
        body: dict[str, Any] = {"checked": len(sample), "mismatched": len(bad), "examples": bad[:SHOWN]}
    except Exception as exc:  # whatever goes wrong, the parent gets one line
        body = {"error": f"{type(exc).__name__}: {exc}"}
    body["seconds"] = time.perf_counter() - started
    conn.send_bytes(orjson.dumps(body))
    conn.close()


class Recount:
    """One set's re-count; :meth:`verdict` collects it."""

    def __init__(self, tokenizer_id: str, prompts: Sequence[Prompt], *, fingerprint: str = "",
                 cache_file: Path | None = None) -> None:
        from loadgen.workload import check_sample

        self.fingerprint, self.cache_file = fingerprint, cache_file
        self._verdict: Verdict | None = None
        ctx = multiprocessing.get_context("fork")
        self._conn, child_end = ctx.Pipe(duplex=False)
        # the parent has not loaded the tokenizer: the child's thread pool starts fresh
        self._proc = ctx.Process(target=_count, args=(child_end, tokenizer_id, list(check_sample(prompts))),
                                 name="loadgen-recount", daemon=True)
        self._proc.start()
        child_end.close()

    def verdict(self, timeout_s: float = 600.0) -> Verdict:
        """The verdict, waiting up to ``timeout_s`` for it (at normal priority from now
        on: the caller is idle, waiting)."""
        if self._verdict is not None:
            return self._verdict
        pid = self._proc.pid
        if pid is not None:
            try:
                os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
            except (AttributeError, OSError):
                pass  # stays idle; it still finishes when the CPU is free
        body: dict[str, Any] = {}
        try:
            if self._conn.poll(timeout_s):
                body = orjson.loads(self._conn.recv_bytes())
            else:
                body = {"error": f"not finished after {timeout_s:.0f} s"}
        except (EOFError, OSError, orjson.JSONDecodeError):
            body = {"error": "the re-count process stopped before it finished"}
        self._finish()
        if "error" in body:
            self._verdict = Verdict(False, error=str(body["error"]), seconds=float(body.get("seconds", 0.0)))
        else:
            examples = tuple(tuple(int(x) for x in e) for e in body["examples"])
            self._verdict = Verdict(True, int(body["checked"]), int(body["mismatched"]), examples,  # type: ignore[arg-type]
                                    float(body["seconds"]))
            if self._verdict.mismatched:
                self._forget()
        return self._verdict

    def _forget(self) -> None:
        """The stored set and table are wrong for this tokenizer: the next build redoes both."""
        from loadgen.workload import pieces

        if self.cache_file is not None:
            self.cache_file.unlink(missing_ok=True)
        if self.fingerprint:
            pieces.forget(self.fingerprint)

    def _finish(self) -> None:
        self._conn.close()
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(5)

    def close(self) -> None:
        """Stop the child if its verdict is no longer wanted."""
        if self._verdict is None:
            self._verdict = Verdict(False, error="not collected")
            self._finish()
