"""The tokenizer's work for sessions, in a fresh process, so the client never loads it.

A loaded tokenizer is ~80 MB of the client's memory and its encodes hold the GIL; a
session run needs it twice — to build the set (fitting texts, probing the chat
template) and, with live history, to count every reply as it ends. Both run here:

* ``python -m loadgen.workload.sidecar_build``: reads a :class:`WorkloadSpec` (JSON) on
  stdin, builds the set and writes it back pickled (or the one-line error);
* ``python -m loadgen.workload.sidecar count TOKENIZER``: prints ``ready``, then answers
  each stdin line ``[id, text]`` (a reply: its tokens) or ``[id, messages]`` (a whole
  conversation: its templated length) with ``id count``.

A fresh process rather than a fork, as for :mod:`loadgen.workload.recount`: a forked
child would share the client's pages copy-on-write and stall it on every write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pickle
import subprocess
import sys
import tempfile
import time
from typing import Any

import orjson

from loadgen.records import Prompt
from loadgen.workload.errors import WorkloadError
from loadgen.workload.spec import WorkloadSpec

START_TIMEOUT_S = 120.0


def build_apart(spec: WorkloadSpec) -> tuple[list[Prompt], int]:
    """The session set for ``spec`` built in a fresh process: (prompts, prompts re-counted)."""
    proc = subprocess.run([sys.executable, "-m", "loadgen.workload.sidecar_build"],
                          input=orjson.dumps(dataclasses.asdict(spec)), capture_output=True, check=False)
    try:
        status, *rest = pickle.loads(proc.stdout)
    except Exception:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise WorkloadError(f"building the sessions failed (exit {proc.returncode}): {last}") from None
    if status != "ok":
        raise WorkloadError(rest[0])
    return rest[0], rest[1]


class ReplyCounter:
    """The parent's side of ``count``: ``await counter.count(text_or_messages)``."""

    def __init__(self, tokenizer: str) -> None:
        self.tokenizer = tokenizer
        self.proc: asyncio.subprocess.Process | None = None
        self.waiting: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.reader: asyncio.Task | None = None
        self.errors: Any = None  # the counter's stderr (a temporary file)

    async def start(self) -> None:
        # stderr to a file, not a pipe: nothing reads it during the run, and a full pipe would stall the counter
        self.errors = tempfile.TemporaryFile()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadgen.workload.sidecar", "count", self.tokenizer,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self.errors)
        assert self.proc.stdout is not None
        started = time.monotonic()
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if line != b"ready\n":
            _kill(self.proc)
            code = await self.proc.wait()
            self.proc = None
            self.errors.seek(0)
            err = self.errors.read().decode(errors="replace").strip().splitlines()
            why = err[-1] if err else (f"exit {code}" if line == b"" else f"it said {line[:80]!r}")
            raise WorkloadError(f"the reply counter did not start within {time.monotonic() - started:.0f} s: {why}")
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            key, count = line.split()
            fut = self.waiting.pop(int(key), None)
            if fut is not None and not fut.done():
                fut.set_result(int(count))
        for fut in self.waiting.values():  # the counter died: nothing more will be counted
            if not fut.done():
                fut.set_exception(WorkloadError("the reply counter exited"))
        self.waiting.clear()

    async def count(self, payload: str | list[dict[str, Any]]) -> int:
        """Tokens of a reply's text, or the templated length of a whole conversation."""
        assert self.proc is not None and self.proc.stdin is not None
        if self.reader is None or self.reader.done():
            raise WorkloadError("the reply counter exited")
        self.next_id += 1
        fut = self.waiting[self.next_id] = asyncio.get_running_loop().create_future()
        self.proc.stdin.write(orjson.dumps([self.next_id, payload]) + b"\n")
        return await fut

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5.0)
        except TimeoutError:
            _kill(self.proc)
            await self.proc.wait()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)
        self.errors.close()


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the counter unless it has exited meanwhile: an exit between a timed-out wait and the kill
    is not an error (uvloop raises ProcessLookupError for it)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _count(tokenizer: str) -> None:
    from loadgen.workload.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    backend = tok.backend_tokenizer
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        key, payload = orjson.loads(line)
        text = payload if isinstance(payload, str) else tok.render_chat(payload, add_generation_prompt=True)
        n = len(backend.encode(text, add_special_tokens=False).ids) if text else 0
        out.write(b"%d %d\n" % (key, n))
        out.flush()


if __name__ == "__main__":
    if sys.argv[1:2] == ["count"] and len(sys.argv) == 3:
        _count(sys.argv[2])
    else:
        sys.exit("usage: python -m loadgen.workload.sidecar count TOKENIZER")
