"""Real conversations for sessions: a sessions JSONL file, or ShareGPT with all its turns.

Sessions JSONL, one session per line (blank lines skipped)::

    {"system": "optional", "turns": [{"user": "...", "assistant": "recorded reply",
                                      "output_len": 128, "think_s": 2.5}, ...]}
    {"messages": [{"role": "system", ...}, {"role": "user", ...}, {"role": "assistant", ...}, ...]}

In ``turns`` only ``user`` is required. In ``messages`` each user message opens a turn
and the assistant message after it is that turn's recorded reply. Lines are used in file
order. A malformed line stops the build with one line naming the file, the line and the
fix — nothing is sent.

ShareGPT (a JSON list of ``{"conversations": [{"from": "human"|"gpt"|"system", "value":
...}]}``): every human turn with the reply after it, in order, until the conversation
stops alternating; conversations are shuffled with the seed, as for ``sharegpt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen.workload.errors import WorkloadError
from loadgen.workload.jsonl import json_objects

HUMAN = {"human", "user"}
ASSISTANT = {"gpt", "assistant", "chatgpt", "bard", "model"}


@dataclass(frozen=True)
class RawTurn:
    user: str
    reply: str | None = None
    output_len: int | None = None
    think_s: float | None = None


@dataclass(frozen=True)
class Conversation:
    where: str  # file:line, or file#index for ShareGPT
    system: str | None
    turns: tuple[RawTurn, ...]


def load_conversations(path: str, count: int, seed: int) -> list[Conversation]:
    """The first ``count`` conversations of the file (ShareGPT: of its seeded shuffle)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise WorkloadError(f"sessions file '{path}' not found: pass --dataset-path to a local JSONL or ShareGPT file")
    data = file.read_bytes()
    convos = _sharegpt(path, data, seed) if data.lstrip()[:1] == b"[" else _jsonl(path, data, count)
    if not convos:
        raise WorkloadError(f"'{path}' has no conversations: write one session per line (docs/workloads.md)")
    if len(convos) < count:
        raise WorkloadError(f"'{path}' has {len(convos)} conversations but {count} sessions were asked for: "
                            f"use --num-prompts {len(convos)} or add conversations")
    return convos[:count]


def _jsonl(path: str, data: bytes, count: int) -> list[Conversation]:
    out: list[Conversation] = []
    for _, where, row in json_objects(data.splitlines(), path, "'turns' or 'messages'"):
        if "turns" in row:
            out.append(_from_turns(row, where))
        elif "messages" in row:
            out.append(_from_messages(row["messages"], where))
        else:
            raise WorkloadError(f"{where}: needs a 'turns' list ([{{\"user\": ...}}, ...]) or a 'messages' list")
        if len(out) == count:
            break
    return out


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _from_turns(row: dict[str, Any], where: str) -> Conversation:
    turns = row["turns"]
    if not isinstance(turns, list) or not turns:
        raise WorkloadError(f"{where}: 'turns' must be a non-empty list of {{\"user\": ...}} objects")
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        raise WorkloadError(f"{where}: 'system' must be a string")
    out = []
    for i, t in enumerate(turns, 1):
        if not isinstance(t, dict) or _text(t.get("user")) is None:
            raise WorkloadError(f"{where}: turn {i} has no user message: give every turn a non-empty \"user\" string")
        reply = t.get("assistant")
        if reply is not None and not isinstance(reply, str):
            raise WorkloadError(f"{where}: turn {i}'s 'assistant' must be a string")
        out_len, think = t.get("output_len"), t.get("think_s")
        if out_len is not None and (not isinstance(out_len, int) or isinstance(out_len, bool) or out_len < 1):
            raise WorkloadError(f"{where}: turn {i}'s 'output_len' must be a positive integer, got {out_len!r}")
        if think is not None and (not isinstance(think, int | float) or isinstance(think, bool) or think < 0):
            raise WorkloadError(f"{where}: turn {i}'s 'think_s' must be a number of seconds >= 0, got {think!r}")
        out.append(RawTurn(t["user"], reply or None, out_len, float(think) if think is not None else None))
    return Conversation(where, system or None, tuple(out))


def _from_messages(messages: Any, where: str) -> Conversation:
    if not isinstance(messages, list) or not messages:
        raise WorkloadError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    system: str | None = None
    turns: list[RawTurn] = []
    for i, m in enumerate(messages, 1):
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if role == "system" and not turns and isinstance(content, str):
            system = content
        elif role == "user":
            if _text(content) is None:
                raise WorkloadError(f"{where}: message {i} is a user message without text: give it a non-empty 'content'")
            turns.append(RawTurn(content))
        elif role == "assistant" and turns and turns[-1].reply is None and isinstance(content, str):
            turns[-1] = RawTurn(turns[-1].user, content or None)
        else:
            raise WorkloadError(f"{where}: message {i} (role {role!r}) does not follow a user message: "
                                "alternate user and assistant messages after an optional system message")
    if not turns:
        raise WorkloadError(f"{where}: the conversation has no user message: add a {{\"role\": \"user\"}} message")
    return Conversation(where, system, tuple(turns))


def _sharegpt(path: str, data: bytes, seed: int) -> list[Conversation]:
    try:
        entries = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise WorkloadError(f"'{path}' is not valid JSON ({exc}); expected a ShareGPT JSON list") from None
    out = []
    for index in np.random.default_rng([seed, 5]).permutation(len(entries)).tolist():
        entry = entries[index]
        msgs = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(msgs, list):
            continue
        system, turns = None, []
        for m in msgs:
            who, text = (m.get("from"), m.get("value")) if isinstance(m, dict) else (None, None)
            if who == "system" and not turns and isinstance(text, str):
                system = text or None
            elif who in HUMAN and _text(text) is not None and (not turns or turns[-1].reply is not None):
                turns.append(RawTurn(text))
            elif who in ASSISTANT and turns and turns[-1].reply is None and _text(text) is not None:
                turns[-1] = RawTurn(turns[-1].user, text)
            else:
                break  # the conversation stops alternating: keep the turns so far
        if turns:
            out.append(Conversation(f"{path}#{index}", system, tuple(turns)))
    return out
