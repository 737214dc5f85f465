"""On-disk cache of built prompt sets, so a sweep builds each set once.

A set is keyed by everything that determines it: every field of the spec, the
tokenizer's file hash, the dataset file's identity (path, size, mtime) and a format
version that is bumped whenever the building algorithm changes its output. One file
per set: a header line, then one JSON object per prompt (orjson).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import orjson

from loadgen.records import Prompt
from loadgen.workload.spec import WorkloadSpec
from loadgen.workload.tokenizer import cache_dir

FORMAT_VERSION = 2  # 2: random prompts from self-joining pieces


def readable_source(path: str) -> bool:
    """A dataset may be a regular file or a pipe (``--dataset-path <(zcat prompts.jsonl.gz)``)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISFIFO(mode)


def cacheable(spec: WorkloadSpec) -> bool:
    """A set read from a pipe is not cached: a pipe has no identity to key it by."""
    if not spec.dataset_path:
        return True
    try:
        return stat.S_ISREG(os.stat(spec.dataset_path).st_mode)
    except OSError:
        return False


def dataset_identity(path: str | None) -> list[Any]:
    if not path:
        return []
    try:
        st = os.stat(path)
    except OSError:
        return [path]
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def cache_key(spec: WorkloadSpec, fingerprint: str) -> str:
    blob = orjson.dumps(
        {
            "format": FORMAT_VERSION,
            "spec": dataclasses.asdict(spec),
            "tokenizer": fingerprint,
            "dataset": dataset_identity(spec.dataset_path),
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(blob).hexdigest()[:24]


def cache_path(spec: WorkloadSpec, fingerprint: str) -> Path:
    return cache_dir() / "prompts" / f"{spec.dataset}-{cache_key(spec, fingerprint)}.jsonl"


def load(path: Path) -> list[Prompt] | None:
    """The cached set, or None when missing or unreadable (then it is rebuilt)."""
    try:
        lines = path.read_bytes().splitlines()
        header = orjson.loads(lines[0])
        if header.get("format") != FORMAT_VERSION or header.get("count") != len(lines) - 1:
            return None
        prompts = []
        for line in lines[1:]:
            row = orjson.loads(line)
            prompts.append(
                Prompt(row["id"], row["input_len"], row["output_len"], row.get("text"), row.get("messages"))
            )
        return prompts
    except (OSError, IndexError, KeyError, TypeError, orjson.JSONDecodeError):
        return None


def save(path: Path, spec: WorkloadSpec, fingerprint: str, prompts: list[Prompt]) -> None:
    """Write atomically; a cache that cannot be written is not an error.

    Rows are written as they are encoded: holding a million ``orjson.dumps`` results
    costs ~4 KB each (orjson over-allocates every output), 4.6 GB for 1M prompts.
    """
    header = {"format": FORMAT_VERSION, "count": len(prompts), "tokenizer": fingerprint, "spec": dataclasses.asdict(spec)}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb", buffering=1 << 20) as out:
            out.write(orjson.dumps(header, option=orjson.OPT_APPEND_NEWLINE))
            for p in prompts:
                row: dict[str, Any] = {"id": p.id, "input_len": p.input_len, "output_len": p.output_len}
                if p.messages is not None:
                    row["messages"] = p.messages
                else:
                    row["text"] = p.text
                out.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
