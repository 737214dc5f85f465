"""The safety-net re-count of a prompt set, in a process of its own at idle priority.

A random set built from the stored piece table needs no tokenizer (see
:func:`loadgen.workload.build_prompts` with ``defer_check``), but every built set is
re-counted through the tokenizer's public API on a sample, and loading the tokenizer
costs ~0.45 s of CPU: most of a cold start. So the re-count runs beside the benchmark
instead of before it: ``python -m loadgen.workload.recount`` started at ``SCHED_IDLE``
priority (it gets the CPU only when the client leaves it idle, and a waking client
takes it back at once) loads the tokenizer, counts the same sample the in-line check
would, and prints its verdict. The caller collects the verdict after a point's clock
stops and records it with the point; a disagreement is reported then (the figures per
input token are wrong) and the cached set and piece table are dropped so that the next
build is checked before its first request.

A fresh process rather than a fork: a forked child would share the client's memory
copy-on-write, and every page the client then writes during the run would fault and be
copied — a stall the measurements would see. It is in a process group of its own, so
Ctrl-C at the terminal stops the client, which then stops it.
"""

from __future__ import annotations

import atexit
import os
import select
import sys
import tempfile
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


def _spawn_idle(argv: list[str], stdout_fd: int) -> int:
    """Start ``argv`` in a process group of its own (Ctrl-C at the terminal goes to the
    client, which stops it) and put it at idle priority at once (``posix_spawn``'s own
    scheduler option refuses ``SCHED_IDLE``; the child also checks).

    Not a session of its own: with autogroup scheduling (the Linux default) a new session
    is a new group that shares the CPU equally with the client's, idle priority or not.
    """
    actions = [(os.POSIX_SPAWN_DUP2, stdout_fd, 1), (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setpgroup=0)
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass  # the child lowers itself (see main)
    return pid


class Recount:
    """One set's re-count; :meth:`verdict` collects it."""

    def __init__(self, tokenizer_id: str, prompts: Sequence[Prompt], *, fingerprint: str = "",
                 cache_file: Path | None = None) -> None:
        from loadgen.workload import check_sample

        self.fingerprint, self.cache_file = fingerprint, cache_file
        self._verdict: Verdict | None = None
        self._owner = os.getpid()  # a forked worker inherits this object; only its maker collects or stops it
        rows = [[p.id, p.input_len, p.text, p.messages] for p in check_sample(prompts)]
        # a file, not the child's stdin: writing a pipe would wait for a child that only
        # runs when this process is idle
        fd, name = tempfile.mkstemp(prefix="loadgen-recount-", suffix=".json")
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps({"tokenizer": tokenizer_id, "prompts": rows}))
        self._sample_file = Path(name)
        self._read, write = os.pipe()
        try:
            self._pid: int | None = _spawn_idle([sys.executable, "-m", "loadgen.workload.recount", name], write)
        finally:
            os.close(write)
        atexit.register(self.close)  # a run that ends before collecting it leaves nothing behind

    def verdict(self, timeout_s: float = 600.0) -> Verdict:
        """The verdict, waiting up to ``timeout_s`` for it (at normal priority from now
        on: the caller is idle, waiting)."""
        if self._verdict is not None:
            return self._verdict
        body = self._read_body(timeout_s)
        self._finish()
        if "error" in body:
            self._verdict = Verdict(False, error=str(body["error"]), seconds=float(body.get("seconds", 0.0)))
        else:
            examples = tuple((int(a), int(b), int(c)) for a, b, c in body["examples"])
            self._verdict = Verdict(True, int(body["checked"]), int(body["mismatched"]), examples,
                                    float(body["seconds"]))
            if self._verdict.mismatched:
                self._forget()
        return self._verdict

    def _to_normal_priority(self) -> None:
        if self._pid is not None:
            try:
                os.sched_setscheduler(self._pid, os.SCHED_OTHER, os.sched_param(0))
            except (AttributeError, OSError):
                pass  # stays idle; it still finishes when the CPU is free

    def _read_body(self, timeout_s: float) -> dict[str, Any]:
        """The child's answer, its priority raised again every quarter second until it answers:
        a child that had not yet reached :func:`main` when first raised lowers itself there, and
        then waits behind every busy process of the machine (a minute and more, seen)."""
        deadline = time.monotonic() + timeout_s
        chunks: list[bytes] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return {"error": f"not finished after {timeout_s:.0f} s"}
            if not chunks:
                self._to_normal_priority()
            if not select.select([self._read], [], [], min(left, 0.25))[0]:
                continue
            data = os.read(self._read, 1 << 16)
            if not data:
                break
            chunks.append(data)
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            return {"error": "the re-count process stopped before it finished"}
        return body if isinstance(body, dict) else {"error": "the re-count process answered nonsense"}

    def _forget(self) -> None:
        """The stored set and table are wrong for this tokenizer: the next build redoes both."""
        from loadgen.workload import pieces

        if self.cache_file is not None:
            self.cache_file.unlink(missing_ok=True)
        if self.fingerprint:
            pieces.forget(self.fingerprint)

    def _finish(self) -> None:
        os.close(self._read)
        pid, self._pid = self._pid, None
        if pid is not None:
            try:
                os.kill(pid, 9)  # done or given up on: it has nothing left worth waiting for
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        self._sample_file.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the child if its verdict is no longer wanted."""
        atexit.unregister(self.close)
        if self._verdict is None and os.getpid() == self._owner:
            self._verdict = Verdict(False, error="not collected")
            self._finish()


def _count(sample_file: Path) -> dict[str, Any]:
    from loadgen.workload import check_lengths
    from loadgen.workload.tokenizer import load_tokenizer

    data = orjson.loads(sample_file.read_bytes())
    sample_file.unlink(missing_ok=True)
    sample = [Prompt(pid, n, 0, text, messages) for pid, n, text, messages in data["prompts"]]
    bad = check_lengths(load_tokenizer(data["tokenizer"]), sample)
    return {"checked": len(sample), "mismatched": len(bad), "examples": bad[:SHOWN]}


def main(argv: list[str] | None = None) -> int:
    """The child: count the sample in the file named by the argument, print the verdict."""
    try:
        if os.sched_getscheduler(0) != os.SCHED_IDLE:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)
    started = time.perf_counter()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadgen.workload.recount SAMPLE.json (loadgen starts it itself)", file=sys.stderr)
        return 2
    (name,) = args
    try:
        body = _count(Path(name))
    except Exception as exc:  # whatever goes wrong, the parent gets one line
        body = {"error": f"{type(exc).__name__}: {exc}"}
    body["seconds"] = time.perf_counter() - started
    sys.stdout.buffer.write(orjson.dumps(body))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
