"""The ``jsonl`` dataset: your own prompts, one JSON object per line.

``{"prompt": "text"}`` or ``{"messages": [{"role": "user", "content": "..."}]}``, with
an optional ``"output_len"``. Lines are used in file order; blank lines are skipped.
The file may be a pipe (``--dataset-path <(zcat prompts.jsonl.gz)``); such a set is read
once per run and not cached.
Every prompt's ``input_len`` is counted with the tokenizer the way the server will
count it, so verification works for your prompts too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from loadgen.records import Prompt
from loadgen.workload.cache import readable_source
from loadgen.workload.errors import WorkloadError
from loadgen.workload.fit import TokenizerView
from loadgen.workload.spec import WorkloadSpec


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise WorkloadError(f"{where}: 'messages' must be a non-empty list of {{\"role\", \"content\"}} objects")
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m):
            raise WorkloadError(f"{where}: every message needs a 'role' string and a 'content'")
    return value


def _output_len(row: dict[str, Any], spec: WorkloadSpec, where: str) -> int:
    if spec.output_len_fixed or "output_len" not in row:
        return spec.output_len
    value = row["output_len"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise WorkloadError(f"{where}: 'output_len' must be a positive integer, got {value!r}")
    return value


def json_objects(lines: Iterable[bytes], shown: str, expect: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Each non-blank line of JSON-lines input as ``(line, "FILE:LINE", object)``; a line that is
    not a JSON object is a one-line error naming it (``expect``: what the object holds)."""
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"{shown}:{lineno}"
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise WorkloadError(f"{where}: not valid JSON ({exc}); write one JSON object a line") from None
        if not isinstance(row, dict):
            raise WorkloadError(f"{where}: expected an object with {expect}")
        yield lineno, where, row


def build_jsonl(view: TokenizerView, spec: WorkloadSpec) -> list[Prompt]:
    path = Path(spec.dataset_path or "").expanduser()
    if not readable_source(str(path)):
        raise WorkloadError(f"JSONL file '{spec.dataset_path}' not found: pass --dataset-path to a local .jsonl file")
    with path.open("rb") as fh:
        return _prompts(view, spec, json_objects(fh, spec.dataset_path or "", "'prompt' or 'messages'"))


def _prompts(view: TokenizerView, spec: WorkloadSpec, objects: Iterator[tuple[int, str, dict[str, Any]]]) -> list[Prompt]:
    prompts: list[Prompt] = []
    for _, where, row in objects:
        output_len = _output_len(row, spec, where)
        pid = len(prompts)
        if "messages" in row:
            messages = _messages(row["messages"], where)
            if not spec.chat:
                raise WorkloadError(
                    f"{where}: has 'messages' but the run sends completions; benchmark the chat endpoint "
                    "or give 'prompt' text"
                )
            prompts.append(Prompt(pid, view.count_messages(messages), output_len, messages=messages))
        elif isinstance(row.get("prompt"), str) and row["prompt"]:
            text = row["prompt"]
            if spec.chat:
                messages = [{"role": "user", "content": text}]
                prompts.append(Prompt(pid, view.count_messages(messages), output_len, messages=messages))
            else:
                prompts.append(Prompt(pid, view.count_text(text), output_len, text=text))
        else:
            raise WorkloadError(f"{where}: needs a non-empty 'prompt' string or a 'messages' list")
        if len(prompts) == spec.num_prompts:
            return prompts
    if not prompts:
        raise WorkloadError(f"'{spec.dataset_path}' has no prompts: write one JSON object per line")
    raise WorkloadError(
        f"'{spec.dataset_path}' has {len(prompts)} prompts but {spec.num_prompts} were asked for: "
        f"use --num-prompts {len(prompts)} or add lines"
    )
