"""Releasing sessions: each turn after the previous reply ended plus its think time.

The runner hands a set whose prompts carry sessions (:mod:`loadgen.workload.sessions`)
to :func:`dispatch_sessions` instead of releasing prompts one by one. A session is
released at its arrival offset through the concurrency gate, which it holds until
its last turn ends — so ``--concurrency N`` means N users, each starting a new
session when theirs ends, and ``--rate`` a session arrival rate.

Turn k carries the whole conversation so far: the system prompt, every earlier user
message and the reply to it — the server's actual reply (live history: its text is
kept for session turns only; ordinary runs keep none; only the answer, ``delta.content``,
never a reasoning parser's ``reasoning_content``, as a chat client sends back) or the recorded one. Its
expected prompt length is turn k-1's plus the template's per-turn wrapper plus the
reply's own tokens plus the new user tokens (one encode of the reply, off the
per-chunk path); a template that does not grow by whole turns is counted in full.
The server's ``usage.prompt_tokens`` is checked against it like every prompt's.

A session ends after its last turn (``completed``), at a failed turn (``failed``), or
when its next turn would not fit the server's context window (``context_exceeded``);
the reason is on its last record. When releasing stops (``--duration``, Ctrl-C) no
further turn starts; the sessions in flight then have no reason (cut by the run's end).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from time import perf_counter_ns
from typing import Any

from loadgen.records import Prompt, RequestRecord, Session, SessionShape
from loadgen.release import send, sleep_until
from loadgen.workload.errors import WorkloadError
from loadgen.workload.sessions import reply_in_history, turn_messages
from loadgen.workload.sidecar import ReplyCounter

COMPLETED, FAILED, CONTEXT = "completed", "failed", "context_exceeded"


class TurnCounter:
    """Expected prompt lengths of live turns, counted by the tokenizer the set was built
    with in a process of its own (:class:`~loadgen.workload.sidecar.ReplyCounter`): the
    client holds no tokenizer (~80 MB) and spends no encode (~0.1-0.3 ms per reply, GIL
    held) on its event loop."""

    def __init__(self, shape: SessionShape, counter: ReplyCounter) -> None:
        self.shape = shape
        self.counter = counter

    async def next_len(self, session: Session, turn: int, previous: int, replies: list[str]) -> int:
        """Turn ``turn``'s prompt length given turn ``turn - 1``'s and the replies so far."""
        shape = self.shape
        if shape.additive:
            n = await self.counter.count(reply_in_history(shape, replies[turn - 1]))
            return previous + shape.per_turn + n + session.turns[turn].user_len
        return await self.counter.count(turn_messages(session, turn, replies))


def session_head(head: bytes, header: str | None, session_id: int) -> bytes:
    """The request head with ``header: <session id>`` (``--session-header``)."""
    if not header:
        return head
    return head.replace(b"\r\nContent-Length: ", f"\r\n{header}: {session_id}\r\nContent-Length: ".encode("latin-1"))


class SessionPlan:
    """What session release needs beyond the runner's arguments."""

    def __init__(self, prompts: Sequence[Prompt], *, header: str | None = None,
                 max_model_len: int | None = None) -> None:
        self.header = header
        self.max_model_len = max_model_len
        self.readers: dict[str, ReplyCounter] = {}
        self.counters: dict[int, TurnCounter] = {}  # one per distinct shape of live-history sessions
        for p in prompts:
            shape = p.session.shape if p.session is not None else None
            if shape is not None and shape.history == "live" and id(shape) not in self.counters:
                reader = self.readers.setdefault(shape.tokenizer, ReplyCounter(shape.tokenizer))
                self.counters[id(shape)] = TurnCounter(shape, reader)
        self.stopped = False
        self.sessions_started = 0

    async def start(self) -> None:
        """Start the reply counters (before the clock: loading a tokenizer takes a second)."""
        for reader in self.readers.values():
            await reader.start()

    async def close(self) -> None:
        for reader in self.readers.values():
            await reader.close()


async def think(due_ns: int) -> None:
    """Wait out a think time on a millisecond timer (whole milliseconds, one more for the
    timer's own rounding), never spinning the loop: thousands of sessions wait at once, and
    a think time is a drawn value, so ~1 ms of lateness (queue time) is no error; the exact
    wait of :func:`~loadgen.release.sleep_until` finishes only what the timer left."""
    wait = due_ns - perf_counter_ns()
    if wait > 0:
        await asyncio.sleep((-(-wait // 1_000_000) + 1) / 1000)
        await sleep_until(due_ns)


async def _session(client: Any, plan: SessionPlan, first: Prompt, due_ns: int,
                   finished: Callable[[RequestRecord], None], inflight: Any, warmup: bool) -> None:
    session = first.session
    assert session is not None
    shape = session.shape
    live = shape.history == "live"
    counter = plan.counters.get(id(shape))
    head = session_head(client.head, plan.header, session.id)
    replies: list[str] = []
    expected = first.input_len
    turns = session.turns
    reply_end = 0
    for k, turn in enumerate(turns):
        if k:
            # due at the reply's end plus think time; a count that took longer makes the turn late (queue time)
            due_ns = reply_end + int(turn.think_s * 1e9)
            await think(due_ns)
            if plan.stopped:
                return
        messages = first.messages if k == 0 else turn_messages(session, k, replies)
        body = client.build_body(Prompt(first.id, expected, turn.output_len, messages=messages))
        rec = RequestRecord(prompt_id=first.id, input_len=expected, output_len=turn.output_len,
                            intended_ns=due_ns, released_ns=perf_counter_ns(), warmup=warmup, session=session.id,
                            turn=k, keep_text=live)
        inflight.now += 1
        if inflight.now > inflight.peak:
            inflight.peak = inflight.now
        try:
            await send(client, rec, body, head)
        except asyncio.CancelledError:
            rec.session_end = FAILED
            finished(rec)
            raise
        finally:
            inflight.now -= 1
        reply_end = rec.last_ns or perf_counter_ns()
        reply = rec.text if live else (turn.reply or "")
        if live and not client.save_text:
            rec.text = rec.reasoning_text = ""
        if rec.error is not None:
            rec.session_end = FAILED
        elif k + 1 == len(turns):
            rec.session_end = COMPLETED
        else:
            replies.append(reply)
            nxt = turns[k + 1]
            if counter is not None:
                try:
                    expected = await counter.next_len(session, k + 1, expected, replies)
                except asyncio.CancelledError:
                    finished(rec)
                    raise
                except WorkloadError as exc:  # the counter died: this session cannot go on exactly
                    rec.session_end, rec.error_detail = FAILED, str(exc)
                    finished(rec)
                    return
            else:
                expected = nxt.input_len
            if plan.max_model_len is not None and expected + nxt.output_len > plan.max_model_len:
                rec.session_end = CONTEXT
        finished(rec)
        if rec.session_end:
            return


async def dispatch_sessions(plan: SessionPlan, client: Any, prompts: Sequence[Prompt],
                            offsets_s: Sequence[float] | None, gate: asyncio.Semaphore | None, start_ns: int,
                            finished: Callable[[RequestRecord], None], tasks: set[asyncio.Task], warmup: bool,
                            inflight: Any) -> None:
    """Release each session at its absolute due time through the gate (held for the whole session)."""
    loop = asyncio.get_running_loop()

    async def one(first: Prompt, due: int) -> None:
        try:
            await _session(client, plan, first, due, finished, inflight, warmup)
        finally:
            if gate is not None:
                gate.release()

    for i, first in enumerate(prompts):
        due = start_ns + (int(offsets_s[i] * 1e9) if offsets_s is not None else 0)
        await sleep_until(due)
        if gate is not None:
            await gate.acquire()
        if plan.stopped:
            if gate is not None:
                gate.release()
            return
        plan.sessions_started += 1
        task = loop.create_task(one(first, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
