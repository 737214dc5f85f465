"""OpenAI ``/v1/chat/completions`` streaming.

Chat streams open with a role-only delta, which is not output; reasoning models
(DeepSeek-R1 behind a reasoning parser) stream their thinking as
``delta.reasoning_content`` (vLLM, SGLang) or ``delta.reasoning``, which is output and
counts as content. ``continuous_usage_stats`` is sent because every chat server this
tool targets (vLLM, SGLang) accepts it; remove it with
``--extra-body '{"stream_options": {"continuous_usage_stats": null}}'`` if a strict
server objects.
"""

from __future__ import annotations

from typing import Any

import orjson

from loadgen.protocols.base import WireProtocol, openai_no_choice, openai_stream_body
from loadgen.records import Prompt


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
            text = None
            if delta:
                text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
            return (bool(text), ct, pt, choice.get("finish_reason"), text, None, None)
        return openai_no_choice(obj, choices, ct, pt)
