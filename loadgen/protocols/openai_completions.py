"""OpenAI ``/v1/completions`` streaming (plain OpenAI-compatible servers, and vLLM).

``openai`` asks for ``stream_options.include_usage`` only: a strictly OpenAI-compatible
server may reject unknown fields. ``vllm`` also asks for
``continuous_usage_stats``, vLLM's extension that puts a running usage on every chunk,
which is what lets the client know how many tokens each chunk carried; ``ignore_eos``
is sent by both when asked for (vLLM, SGLang and llama.cpp honour it).
"""

from __future__ import annotations

from typing import Any

import orjson

from loadgen.protocols.base import ANSWER, WireProtocol, openai_no_choice, openai_stream_body, require_text
from loadgen.records import Prompt


class OpenAICompletions(WireProtocol):
    name = "openai"
    default_endpoint = "/v1/completions"
    continuous_usage = False

    def body_dict(self, prompt: Prompt, model: str, *, ignore_eos: bool) -> dict[str, Any]:
        stream_options: dict[str, Any] = {"include_usage": True}
        if self.continuous_usage:
            stream_options["continuous_usage_stats"] = True
        return openai_stream_body(
            model,
            {"prompt": require_text(prompt, self.name)},
            prompt.output_len,
            stream_options,
            ignore_eos=ignore_eos,
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
            text = choice.get("text")
            # an int, not bool(text): the client's per-chunk kind test is then an int comparison
            return (ANSWER if text else False, ct, pt, choice.get("finish_reason"), text, None, None)
        return openai_no_choice(obj, choices, ct, pt)


class VLLMCompletions(OpenAICompletions):
    name = "vllm"
    continuous_usage = True
