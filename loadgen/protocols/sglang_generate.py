"""SGLang's native ``/generate`` streaming.

Each event carries the text generated *so far* (not a delta) and ``meta_info`` with
running ``completion_tokens`` and ``prompt_tokens``; ``finish_reason`` is an object
(``{"type": "length", ...}``) or null. The per-request state remembers how much text and
how many tokens were already seen, so that each event yields only its new part and an
event that adds no token is not counted as content.
"""

from __future__ import annotations

from typing import Any

import orjson

from loadgen.protocols.base import MalformedEvent, WireProtocol, error_text, require_text
from loadgen.records import Prompt


class SGLangGenerate(WireProtocol):
    name = "sglang"
    default_endpoint = "/generate"

    def body_dict(self, prompt: Prompt, model: str, *, ignore_eos: bool) -> dict[str, Any]:
        sampling: dict[str, Any] = {"max_new_tokens": prompt.output_len, "temperature": 0.0}
        if ignore_eos:
            sampling["ignore_eos"] = True
        body: dict[str, Any] = {
            "text": require_text(prompt, self.name),
            "sampling_params": sampling,
            "stream": True,
        }
        if model:
            body["model"] = model
        return body

    def new_state(self) -> list[int]:
        return [0, 0]  # [characters of text seen, completion tokens seen]

    def parse(self, data: bytes, state: list[int], loads: Any = orjson.loads) -> tuple:
        obj = loads(data)
        meta = obj.get("meta_info")
        if meta is None:
            err = error_text(obj)
            if err is not None:
                return (False, None, None, None, None, err, None)
            raise MalformedEvent(f"SGLang event without meta_info: {data[:80]!r}")
        text = obj.get("text") or ""
        ct = meta.get("completion_tokens")
        pt = meta.get("prompt_tokens")
        fin = meta.get("finish_reason")
        if type(fin) is dict:
            fin = fin.get("type")
        seen_chars, seen_tokens = state
        new_text = text[seen_chars:]
        state[0] = len(text)
        if ct is not None:
            content = ct > seen_tokens
            state[1] = ct
        else:
            content = bool(new_text)
        # SGLang reports the prefix-cache hit in every event's meta_info; read it once, at the end
        return (content, ct, pt, fin, new_text, None, meta.get("cached_tokens") if fin is not None else None)
