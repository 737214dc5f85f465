"""Per-request output writers: turn the engine's token counts into wire bytes.

The engine loop calls ``deliver`` on every sequence that produced tokens in a
step, and the writer puts the SSE event straight onto the socket. Handlers only
wake at the start and the end of a request, never per chunk: with thousands of
streams that is the difference between keeping the step schedule and not.
Events are assembled from pre-encoded byte fragments; the output pieces are
plain ASCII words, so they need no JSON escaping.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from launcher.sim.engine import Seq
from launcher.sim.faults import FaultPlan

if TYPE_CHECKING:
    from launcher.sim.state import SimState

DONE = b"data: [DONE]\n\n"


def _usage(prompt: int, completion: int, cached: int | None = None) -> bytes:
    """A usage object; ``cached`` (the prefix-cache hit) only in a request's final usage, as vLLM does."""
    usage = b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d' % (prompt, prompt + completion, completion)
    if cached is not None:
        usage += b',"prompt_tokens_details":{"cached_tokens":%d}' % cached
    return usage + b"}"


class Stream:
    """One request's output: text pieces, faults, metrics, and the finish signal."""

    kind = "completion"

    def __init__(
        self,
        state: SimState,
        seq: Seq,
        rid: str,
        plan: FaultPlan,
        *,
        streaming: bool,
        include_usage: bool = False,
        continuous_usage: bool = False,
        piece_offset: int = 0,
        reasoning: int = 0,
    ) -> None:
        self.state = state
        self.reasoning = reasoning  # the first this many output tokens are reasoning (chat)
        self.reasoned = 0  # tokens sent as reasoning so far
        self.seq = seq
        self.rid = rid
        self.plan = plan
        self.streaming = streaming
        self.include_usage = include_usage
        self.continuous_usage = continuous_usage
        self.transport: asyncio.Transport | None = None
        self.chunked = True
        self.sent = 0
        self.pos = piece_offset % len(state.pieces)
        self.texts: list[bytes] = []  # kept only for non-streamed and cumulative outputs
        self.reasoning_texts: list[bytes] = []  # the same, for a non-streamed reasoning part
        self.last_t = 0.0
        self.stalled = False
        self.stall_until = 0.0
        self.outcome = ""  # "", "done", "reset", "gone"
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.created = int(time.time())
        self.model_json = state.model_json
        # the hot path applies when nothing special can happen to this stream
        self.plain = False
        self.cached: int | None = None  # prompt tokens from the prefix cache (None: caching off)
        seq.sink = self

    def attach(self, transport: asyncio.Transport | None, chunked: bool) -> None:
        self.transport = transport
        self.chunked = chunked
        self.plain = self.streaming and transport is not None and not (
            self.plan.reset_after or self.plan.stall_after or self.plan.malformed_after
        )

    # -- text ---------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        pieces = self.state.pieces2
        size = len(self.state.pieces)
        out = []
        pos = self.pos
        while n > 0:
            take = n if n < size - pos else size - pos
            out.append(b"".join(pieces[pos : pos + take]))
            n -= take
            pos = (pos + take) % size
        self.pos = pos
        return out[0] if len(out) == 1 else b"".join(out)

    def _frame(self, data: bytes) -> bytes:
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    # -- protocol events (overridden) ----------------------------------------
    def head_event(self) -> bytes:
        return b""

    def content_event(self, text: bytes, finish: bytes) -> bytes:
        raise NotImplementedError

    def malformed_event(self, text: bytes) -> bytes:
        return b'data: {"id":"' + self.rid.encode() + b'","choices":[{"index":0,"text":"' + text + b"\n\n"

    def tail_events(self) -> bytes:
        return DONE

    def finish_json(self) -> bytes:
        reason = self.seq.finish_reason
        return b'"length"' if reason == "length" else b'"stop"'

    # -- engine side ------------------------------------------------------------
    def deliver(self, now: float) -> None:
        """Called by the engine loop after a step that produced tokens for us."""
        if self.plain:  # no fault planned, streaming: the hot path
            seq = self.seq
            n = seq.pending
            transport = self.transport
            if transport.is_closing():
                self._end("gone")
                return
            seq.pending = 0
            before = self.sent
            self.sent = before + n
            state = self.state
            if before:
                state.itl_hist.observe_many((now - self.last_t) / n, n)
            else:
                state.ttft_hist.observe(now - seq.arrival)
                state.queue_hist.observe(max(0.0, seq.admitted_at - seq.arrival))
            self.last_t = now
            state.chunks_sent += 1
            if n == 1:
                pos = self.pos
                text = state.pieces[pos]
                self.pos = pos + 1 if pos + 1 < state.n_pieces else 0
            else:
                text = self._take(n)
            if seq.done:
                data = self.content_event(text, self.finish_json()) + self.tail_events()
                transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
                self._end("done")
            else:
                data = self.content_event(text, b"null")
                transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
            return
        self._deliver_checked(now)

    def _deliver_checked(self, now: float) -> None:
        """The general path: non-streamed bodies, stalls, resets, malformed events."""
        seq = self.seq
        if self.outcome:
            seq.pending = 0
            return
        if self.stalled and now < self.stall_until:
            return
        n = seq.pending
        if n <= 0 and not seq.done:
            return
        transport = self.transport
        if self.streaming and (transport is None or transport.is_closing()):
            self._end("gone")
            return
        plan = self.plan
        before = self.sent
        after = before + n
        state = self.state
        if plan.reset_after and before < plan.reset_after <= after:
            state.faults_injected["reset_mid"] += 1
            if transport is not None:
                transport.abort()
            self._end("reset")
            return
        if plan.stall_after and not self.stalled and before < plan.stall_after <= after:
            state.faults_injected["stall"] += 1
            self.stalled = True
            delay = state.stall_s
            self.stall_until = now + delay
            asyncio.get_running_loop().call_later(delay, self._flush)
            return
        seq.pending = 0
        self.sent = after
        if before == 0:
            state.ttft_hist.observe(now - seq.arrival)
            state.queue_hist.observe(max(0.0, seq.admitted_at - seq.arrival))
        elif n:
            state.itl_hist.observe_many((now - self.last_t) / n, n)
        self.last_t = now
        state.chunks_sent += 1
        text = self._take(n)
        if not self.streaming:
            if after <= self.reasoning:
                self.reasoned = after
                self.reasoning_texts.append(text)
            else:
                self.texts.append(text)
            if seq.done:
                self._end("done")
            return
        finish = self.finish_json() if seq.done else b"null"
        if plan.malformed_after and before < plan.malformed_after <= after:
            state.faults_injected["malformed"] += 1
            data = self.malformed_event(text)
        else:
            data = self.content_event(text, finish)
        if seq.done:
            data += self.tail_events()
        transport.write(self._frame(data))
        if seq.done:
            self._end("done")

    def _flush(self) -> None:
        self.stall_until = 0.0
        if self.seq.pending or self.seq.done:
            self.deliver(time.perf_counter())

    def _end(self, outcome: str) -> None:
        self.outcome = outcome
        seq = self.seq
        seq.pending = 0
        if not seq.done:
            seq.cancelled = True
            self.state.wake()
        if outcome == "done":
            now = time.perf_counter()
            self.state.e2e_hist.observe(now - seq.arrival)
            self.state.finished[seq.finish_reason] += 1
        if not self.done.done():
            self.done.set_result(outcome)

    # -- non-streamed body --------------------------------------------------------
    def text(self) -> str:
        return b"".join(self.texts).decode()

    def usage(self) -> dict[str, Any]:
        p, c = self.seq.prompt_len, self.sent
        usage: dict[str, Any] = {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c}
        if self.cached is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached}
        return usage


    def body(self) -> dict[str, Any]:
        """The whole response of a request that did not ask to stream (each route's shape)."""
        raise NotImplementedError


class CompletionStream(Stream):
    kind = "completion"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pre = (
            b'data: {"id":"' + self.rid.encode() + b'","object":"text_completion","created":%d,"model":' % self.created
            + self.model_json + b',"choices":[{"index":0,"text":"'
        )
        self._tpl = self._pre.replace(b"%", b"%%") + b'%b","logprobs":null,"finish_reason":%b,"stop_reason":null}],"usage":%b}\n\n'

    def content_event(self, text: bytes, finish: bytes) -> bytes:
        usage = _usage(self.seq.prompt_len, self.sent) if self.continuous_usage else b"null"
        return self._tpl % (text, finish, usage)

    def tail_events(self) -> bytes:
        if not self.include_usage:
            return DONE
        return (
            b'data: {"id":"' + self.rid.encode() + b'","object":"text_completion","created":%d,"model":' % self.created
            + self.model_json + b',"choices":[],"usage":' + _usage(self.seq.prompt_len, self.sent, self.cached)
            + b"}\n\n" + DONE
        )

    def body(self) -> dict[str, Any]:
        return {
            "id": self.rid,
            "object": "text_completion",
            "created": self.created,
            "model": self.state.model,
            "choices": [
                {"index": 0, "text": self.text(), "logprobs": None, "finish_reason": self.seq.finish_reason,
                 "stop_reason": None, "prompt_logprobs": None}
            ],
            "usage": self.usage(),
        }


class ChatStream(Stream):
    kind = "chat"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pre = (
            b'data: {"id":"' + self.rid.encode() + b'","object":"chat.completion.chunk","created":%d,"model":'
            % self.created + self.model_json + b',"choices":['
        )
        self._tpl = (self._pre.replace(b"%", b"%%")
                     + b'{"index":0,"delta":{"content":"%b"},"logprobs":null,"finish_reason":%b}]%b}\n\n')
        self._tpl_reasoning = self._tpl.replace(b'"content"', b'"%b"' % self.state.cfg.reasoning_field.encode())

    def _usage_part(self, completion: int) -> bytes:
        if self.continuous_usage:
            return b',"usage":' + _usage(self.seq.prompt_len, completion)
        return b""

    def head_event(self) -> bytes:
        return (
            self._pre + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]'
            + self._usage_part(0) + b"}\n\n"
        )

    def content_event(self, text: bytes, finish: bytes) -> bytes:
        sent = self.sent
        if sent <= self.reasoning:  # a chunk is reasoning when it ends within the reasoning part
            self.reasoned = sent
            return self._tpl_reasoning % (text, finish, self._usage_part(sent))
        return self._tpl % (text, finish, self._usage_part(sent))

    def _details(self) -> bytes:
        """``completion_tokens_details`` spliced into the final usage, in reasoning mode."""
        return b',"completion_tokens_details":{"reasoning_tokens":%d}}' % self.reasoned if self.reasoning else b"}"

    def malformed_event(self, text: bytes) -> bytes:
        return self._pre + b'{"index":0,"delta":{"content":"' + text + b"\n\n"

    def tail_events(self) -> bytes:
        if not self.include_usage:
            return DONE
        return (self._pre + b'],"usage":' + _usage(self.seq.prompt_len, self.sent, self.cached)[:-1] + self._details()
                + b"}\n\n" + DONE)

    def body(self) -> dict[str, Any]:
        return {
            "id": self.rid,
            "object": "chat.completion",
            "created": self.created,
            "model": self.state.model,
            "choices": [
                {"index": 0, "message": self._message(), "logprobs": None, "finish_reason": self.seq.finish_reason,
                 "stop_reason": None}
            ],
            "usage": self.usage(),
        }

    def _message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "tool_calls": [],
                                   "content": None if self.reasoning and not self.texts else self.text()}
        if self.reasoning:
            message[self.state.cfg.reasoning_field] = b"".join(self.reasoning_texts).decode()
        return message

    def usage(self) -> dict[str, Any]:
        usage = super().usage()
        if self.reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoned}
        return usage


class GenerateStream(Stream):
    """SGLang's native ``/generate``: every event carries the whole text so far."""

    kind = "generate"

    def _meta(self, finish: bytes) -> bytes:
        return (
            b'"meta_info":{"id":"' + self.rid.encode() + b'","finish_reason":' + finish
            + b',"prompt_tokens":%d,"completion_tokens":%d,"cached_tokens":%d}'
            % (self.seq.prompt_len, self.sent, self.cached or 0)
        )

    def finish_json(self) -> bytes:
        if self.seq.finish_reason == "length":
            return b'{"type":"length","length":%d}' % self.sent
        return b'{"type":"stop","matched":1}'

    def content_event(self, text: bytes, finish: bytes) -> bytes:
        self.texts.append(text)
        return b'data: {"text":"' + b"".join(self.texts) + b'",' + self._meta(finish) + b',"index":0}\n\n'

    def malformed_event(self, text: bytes) -> bytes:
        self.texts.append(text)
        return b'data: {"text":"' + b"".join(self.texts) + b'","meta_info":{"id\n\n'

    def body(self) -> dict[str, Any]:
        reason = (
            {"type": "length", "length": self.sent}
            if self.seq.finish_reason == "length"
            else {"type": "stop", "matched": 1}
        )
        return {
            "text": self.text(),
            "meta_info": {
                "id": self.rid,
                "finish_reason": reason,
                "prompt_tokens": self.seq.prompt_len,
                "completion_tokens": self.sent,
                "cached_tokens": self.cached or 0,
            },
            "index": 0,
        }
