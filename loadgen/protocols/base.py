"""What every wire protocol provides to the client.

A protocol knows two things: how to turn a :class:`~loadgen.records.Prompt` into the
bytes of a streaming request body, and how to read one SSE event's ``data`` payload.
Everything else (HTTP, timing, retries) is the client's, so adding a protocol touches
only this folder.

:meth:`WireProtocol.parse` runs once per streamed event on the hot path, so it returns
a plain tuple in :class:`Event`'s field order (building a named tuple costs a Python
call per event), decodes with orjson straight from the bytes, and reads only the
fields the client needs. Malformed data raises (``ValueError`` from orjson, or
:class:`MalformedEvent`, or ``AttributeError`` for JSON that is not an object); the
client counts it as a ``malformed`` event.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from loadgen.errors import LoadgenError
from loadgen.records import Prompt


class Event(NamedTuple):
    """One parsed SSE event.

    ``content`` is falsy for an event that carries no output, else its kind:
    :data:`ANSWER` (``True`` compares equal to it, so protocols without reasoning
    return a bool), :data:`REASONING` (a recognised reasoning delta) or
    :data:`UNRECOGNISED` (text under a delta field the protocol does not know: still
    output, and named by :meth:`WireProtocol.reasoning_report` once the request ends).
    ``completion_tokens`` is the server's *running* count of output tokens when the
    event carries usage (vLLM ``continuous_usage_stats``, SGLang ``meta_info``, or a
    final usage-only chunk), else ``None``; the client turns running counts into per
    chunk deltas. ``error`` is set when the server reports an error inside the stream.
    ``cached_tokens`` is the prompt tokens the server found in its prefix cache, read
    only from the request's final usage (``None`` when the server does not say).
    """

    content: int
    completion_tokens: int | None
    prompt_tokens: int | None
    finish_reason: str | None
    text: str | None
    error: str | None
    cached_tokens: int | None


# Kinds of output an event carries (``Event.content``); small ints so that the client's
# per-chunk test is one comparison.
ANSWER = 1
REASONING = 2
UNRECOGNISED = 3


class MalformedEvent(LoadgenError, ValueError):
    """An event whose data is not the JSON object the protocol expects."""


class WireProtocol:
    """Base class; subclasses set ``name``, ``default_endpoint`` and implement both hooks."""

    name: str = ""
    default_endpoint: str = ""

    def build_body(
        self,
        prompt: Prompt,
        model: str,
        *,
        ignore_eos: bool = True,
        extra_body: dict[str, Any] | None = None,
    ) -> bytes:
        body = self.body_dict(prompt, model, ignore_eos=ignore_eos)
        if extra_body:
            body = merge_body(body, extra_body)
        return orjson.dumps(body)

    def body_dict(self, prompt: Prompt, model: str, *, ignore_eos: bool) -> dict[str, Any]:
        raise NotImplementedError

    def new_state(self) -> Any:
        """Per-request parse state (``None`` for stateless protocols)."""
        return None

    def parse(self, data: bytes, state: Any) -> tuple:
        """``(content, completion_tokens, prompt_tokens, finish_reason, text, error, cached_tokens)``."""
        raise NotImplementedError

    def reasoning_report(self, state: Any) -> tuple[int | None, str | None]:
        """Once per request, after its last event: the server's own count of reasoning
        tokens (``usage.completion_tokens_details.reasoning_tokens``; ``None`` when not
        given) and the name of a delta field that carried text the protocol did not
        recognise (``None`` when there was none). Read from the parse state, so that
        nothing about it is done per chunk."""
        return (None, None)


def merge_body(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` last, recursively for nested objects, so that
    ``--extra-body '{"stream_options": {"continuous_usage_stats": false}}'`` changes one
    key without dropping ``include_usage``. A ``null`` value removes the key, which is
    how a field this tool sends by default is taken out for a strict server."""
    out = dict(body)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_body(out[key], value)
        else:
            out[key] = value
    return out


def error_text(obj: dict[str, Any]) -> str | None:
    """The message of an OpenAI-style error object sent inside a stream, if this is one."""
    err = obj.get("error")
    if err is None and obj.get("object") == "error":
        err = obj
    if err is None:
        return None
    if isinstance(err, dict):
        return str(err.get("message") or err)[:300]
    return str(err)[:300]


def openai_stream_body(
    model: str,
    source: dict[str, Any],
    output_len: int,
    stream_options: dict[str, Any],
    *,
    ignore_eos: bool,
    max_completion_tokens: bool = False,
) -> dict[str, Any]:
    """The body of an OpenAI-style streaming request (``/v1/completions`` and
    ``/v1/chat/completions``): ``source`` is the input field (``{"prompt": ...}`` or
    ``{"messages": ...}``); chat also caps ``max_completion_tokens``, the newer name."""
    body: dict[str, Any] = {"model": model, **source, "max_tokens": output_len}
    if max_completion_tokens:
        body["max_completion_tokens"] = output_len
    body["temperature"] = 0.0
    body["stream"] = True
    body["stream_options"] = stream_options
    if ignore_eos:
        body["ignore_eos"] = True
    return body


def openai_no_choice(obj: dict[str, Any], choices: Any, ct: int | None, pt: int | None) -> tuple:
    """:meth:`WireProtocol.parse`'s result for an OpenAI-style event with no choice: the
    final usage-only chunk (``choices: []``), or an in-stream error object (no
    ``choices`` at all). Events that carry a choice never get here, so the per-token
    path stays inline in each protocol's ``parse``, and the final usage's
    ``prompt_tokens_details.cached_tokens`` is read here, once per request."""
    if choices is None:
        err = error_text(obj)
        if err is not None:
            return (False, None, None, None, None, err, None)
    return (False, ct, pt, None, None, None, cached_tokens(obj.get("usage")))


def cached_tokens(usage: Any) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens`` (OpenAI, vLLM with
    ``--enable-prompt-tokens-details``, SGLang with ``--enable-cache-report``), or
    ``None`` when the server does not report it: absent is not zero."""
    if not usage:
        return None
    details = usage.get("prompt_tokens_details")
    if not details:
        return None
    value = details.get("cached_tokens")
    return value if type(value) is int else None


def require_text(prompt: Prompt, protocol: str) -> str:
    if prompt.text is None:
        raise ValueError(
            f"prompt {prompt.id} has chat messages but backend '{protocol}' sends raw text; "
            "use --backend openai-chat, or build text prompts"
        )
    return prompt.text
