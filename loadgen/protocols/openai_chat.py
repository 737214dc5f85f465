"""OpenAI ``/v1/chat/completions`` streaming.

Chat streams open with a role-only delta, which is not output; reasoning models
(DeepSeek-R1 behind a reasoning parser) stream their thinking as
``delta.reasoning_content`` (vLLM, SGLang) or ``delta.reasoning`` (newer vLLM), which
is output of the :data:`REASONING` kind; ``delta.content`` is the answer. A delta whose
text sits under any other field is output too (:data:`UNRECOGNISED`): its name is
looked for only in a delta that carries neither (the role chunk, once per request, or
such a field), and remembered, so the common chunk pays nothing for it. The server's
``completion_tokens_details.reasoning_tokens`` is read only from the usage that ends a
request (with the finish reason, or the usage-only chunk); SGLang puts it at
``usage.reasoning_tokens``. ``continuous_usage_stats`` is sent because every chat server this
tool targets (vLLM, SGLang) accepts it; remove it with
``--extra-body '{"stream_options": {"continuous_usage_stats": null}}'`` if a strict
server objects.
"""

from __future__ import annotations

from typing import Any

import orjson

from loadgen.protocols.base import (
    ANSWER,
    REASONING,
    UNRECOGNISED,
    WireProtocol,
    openai_no_choice,
    openai_stream_body,
)
from loadgen.records import Prompt

# delta fields that are not output text, or whose text is already accounted for
KNOWN_DELTA_FIELDS = frozenset({
    "role", "content", "reasoning_content", "reasoning", "tool_calls", "function_call", "refusal", "name",
})


class OpenAIChat(WireProtocol):
    name = "openai-chat"
    default_endpoint = "/v1/chat/completions"

    def body_dict(self, prompt: Prompt, model: str, *, ignore_eos: bool) -> dict[str, Any]:
        if prompt.messages is None:
            raise ValueError(
                f"prompt {prompt.id} is raw text but backend 'openai-chat' sends messages; "
                "build chat prompts (--chat) or use --backend openai"
            )
        return openai_stream_body(
            model,
            {"messages": prompt.messages},
            prompt.output_len,
            {"include_usage": True, "continuous_usage_stats": True},
            ignore_eos=ignore_eos,
            max_completion_tokens=True,
        )

    def parse(self, data: bytes, state: Any, loads: Any = orjson.loads) -> tuple:
        obj = loads(data)
        usage = obj.get("usage")
        if usage:
            ct = usage.get("completion_tokens")
            pt = usage.get("prompt_tokens")
        else:
            ct = pt = None
        choices = obj.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            fin = choice.get("finish_reason")
            if fin is not None and usage:
                _usage_reasoning(usage, state)
            if delta:
                text = delta.get("content")
                if text:
                    return (ANSWER, ct, pt, fin, text, None, None)
                text = delta.get("reasoning_content") or delta.get("reasoning")
                if text:
                    return (REASONING, ct, pt, fin, text, None, None)
                text = _unrecognised(delta, state)
                if text:
                    return (UNRECOGNISED, ct, pt, fin, text, None, None)
            return (False, ct, pt, fin, None, None, None)
        if usage:
            _usage_reasoning(usage, state)
        return openai_no_choice(obj, choices, ct, pt)

    def new_state(self) -> list:
        return [None, None]  # [reasoning tokens from usage, name of an unrecognised text field]

    def reasoning_report(self, state: list) -> tuple[int | None, str | None]:
        return (state[0], state[1])


def _usage_reasoning(usage: dict[str, Any], state: list) -> None:
    """OpenAI's ``completion_tokens_details.reasoning_tokens``, or SGLang's top-level
    ``usage.reasoning_tokens`` (which it sends as 0 when it does not count them: the
    metrics trust a 0 only when no reasoning delta came)."""
    details = usage.get("completion_tokens_details")
    tokens = details.get("reasoning_tokens") if details else usage.get("reasoning_tokens")
    if type(tokens) is int:
        state[0] = tokens


def _unrecognised(delta: dict[str, Any], state: list) -> str | None:
    """Text under a field this protocol does not know (found once, then looked up by name)."""
    name = state[1]
    if name is not None:
        value = delta.get(name)
        return value if type(value) is str else None
    for key, value in delta.items():
        if type(value) is str and value and key not in KNOWN_DELTA_FIELDS:
            state[1] = key
            return value
    return None
