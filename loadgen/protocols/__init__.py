"""Wire protocols by backend name: ``get_protocol("vllm")`` and so on."""

from __future__ import annotations

from loadgen.protocols.base import Event, MalformedEvent, WireProtocol
from loadgen.protocols.openai_chat import OpenAIChat
from loadgen.protocols.openai_completions import OpenAICompletions, VLLMCompletions
from loadgen.protocols.sglang_generate import SGLangGenerate

_REGISTRY: dict[str, type[WireProtocol]] = {
    "openai": OpenAICompletions,
    "vllm": VLLMCompletions,
    "openai-chat": OpenAIChat,
    "sglang": SGLangGenerate,
}

BACKENDS: tuple[str, ...] = tuple(_REGISTRY)


def get_protocol(backend: str) -> WireProtocol:
    """The protocol for a ``--backend`` name; unknown names list the valid ones."""
    try:
        return _REGISTRY[backend]()
    except KeyError:
        raise ValueError(
            f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}"
        ) from None


__all__ = ["BACKENDS", "Event", "MalformedEvent", "WireProtocol", "get_protocol"]
