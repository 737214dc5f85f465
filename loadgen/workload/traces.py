"""Request traces as production recorded them: Mooncake JSONL, Azure LLM inference CSV, BurstGPT CSV.

A trace is read whole into a :class:`Trace` of plain arrays (arrival time, input and
output tokens, and for Mooncake the prompt's block hash ids) before anything is sent,
so a bad file is refused with one line naming the file, the line and the fix, and
nothing is built from half of it. Reading keeps no text: 12,000 Mooncake rows of ~24
hash ids each are a few MB of integers.

Formats (the files' own column names):

* ``mooncake`` — one JSON object a line: ``timestamp`` (ms from the trace start),
  ``input_length``, ``output_length``, ``hash_ids`` (the ids of the prompt's
  consecutive blocks of ``block_size`` tokens; ``len(hash_ids) ==
  ceil(input_length / block_size)``).
* ``azure`` — CSV ``TIMESTAMP,ContextTokens,GeneratedTokens``; ``TIMESTAMP`` is a
  wall-clock time (``2023-11-16 18:15:46.6805900``).
* ``burstgpt`` — CSV ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``;
  ``Timestamp`` in seconds. Rows with 0 response tokens were failures in the original
  service: they are skipped and counted (``skipped_failed``).
"""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.workload.errors import WorkloadError
from loadgen.workload.jsonl import json_objects

TRACE_FORMATS = ("mooncake", "azure", "burstgpt")
DEFAULT_BLOCK_SIZE = 512

# CSV formats: the columns read, in the order (time, input tokens, output tokens).
_CSV_COLUMNS = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens"),
}


@dataclass(frozen=True)
class Trace:
    """A trace's requests in file order, times in seconds from its first request.

    ``hash_ids`` (Mooncake only, else None) holds every row's block ids end to end;
    row ``i``'s are ``hash_ids[id_starts[i]:id_starts[i + 1]]``. ``lines`` is each
    row's line number in the file (errors found later still name the line).
    """

    path: str
    format: str
    times_s: np.ndarray  # float64, non-decreasing, times_s[0] == 0
    input_lens: np.ndarray  # int64
    output_lens: np.ndarray  # int64
    lines: np.ndarray  # int64
    hash_ids: np.ndarray | None = None  # int64
    id_starts: np.ndarray | None = None  # int64, len(rows) + 1
    skipped_failed: int = 0  # BurstGPT rows with 0 response tokens

    def __len__(self) -> int:
        return int(self.times_s.size)

    def ids_of(self, row: int) -> np.ndarray:
        """Row ``row``'s hash ids (Mooncake)."""
        assert self.hash_ids is not None and self.id_starts is not None
        return self.hash_ids[self.id_starts[row]:self.id_starts[row + 1]]


def read_trace(path: str, fmt: str, block_size: int = DEFAULT_BLOCK_SIZE) -> Trace:
    """The trace at ``path`` in format ``fmt``; a :class:`WorkloadError` naming the line for bad input."""
    if fmt not in TRACE_FORMATS:
        raise WorkloadError(f"unknown trace format '{fmt}': use one of {', '.join(TRACE_FORMATS)}")
    if block_size < 1:
        raise WorkloadError(f"--block-size must be at least 1 token, got {block_size}")
    file = Path(path).expanduser()
    if not file.exists() or file.is_dir():  # a pipe will do: it is read once, here
        raise WorkloadError(f"trace file '{path}' not found: pass --dataset-path to a local {fmt} trace")
    rows = _mooncake_rows(file, path, block_size) if fmt == "mooncake" else _csv_rows(file, path, fmt)
    # typed arrays: a BurstGPT file has millions of rows
    times, ins, outs, lines = array("d"), array("q"), array("q"), array("q")
    ids, starts = array("q"), array("q", [0])
    skipped = 0
    for line, t, n_in, n_out, row_ids in rows:
        if times and t < times[-1]:
            raise WorkloadError(
                f"{path}:{line}: timestamp goes back in time ({_seconds(t)} after {_seconds(times[-1])}); "
                "sort the trace by its timestamp column")
        if fmt == "burstgpt" and n_out == 0:
            skipped += 1
            continue
        times.append(t)
        ins.append(n_in)
        outs.append(n_out)
        lines.append(line)
        if row_ids is not None:
            ids.extend(row_ids)
            starts.append(len(ids))
    if not times:
        what = "every row has 0 response tokens (failed requests)" if skipped else "it has no requests"
        raise WorkloadError(f"{path}: nothing to replay: {what}; give a trace with at least one request")
    t0 = times[0]
    mooncake = fmt == "mooncake"
    return Trace(
        path=path, format=fmt,
        times_s=np.frombuffer(times, dtype=np.float64) - t0,
        input_lens=np.frombuffer(ins, dtype=np.int64).copy(),
        output_lens=np.frombuffer(outs, dtype=np.int64).copy(),
        lines=np.frombuffer(lines, dtype=np.int64).copy(),
        hash_ids=np.frombuffer(ids, dtype=np.int64).copy() if mooncake else None,
        id_starts=np.frombuffer(starts, dtype=np.int64).copy() if mooncake else None,
        skipped_failed=skipped,
    )


def _seconds(t: float) -> str:
    return f"{t:.3f} s"


Row = tuple[int, float, int, int, list[int] | None]  # line, time (s), input tokens, output tokens, hash ids


def _count(value: Any, name: str, where: str, minimum: int) -> int:
    """A whole number of tokens >= ``minimum`` (JSON numbers or CSV text)."""
    if isinstance(value, str):
        try:
            value = float(value) if value.strip() else None
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value != int(value) or value < minimum:
        raise WorkloadError(f"{where}: {name} must be a whole number >= {minimum}, got {value!r}; fix or drop the row")
    return int(value)


def _mooncake_rows(file: Path, path: str, block_size: int) -> Iterator[Row]:
    with file.open("rb") as fh:
        for line, where, row in json_objects(fh, path, "timestamp, input_length, output_length, hash_ids"):
            missing = [k for k in ("timestamp", "input_length", "output_length", "hash_ids") if k not in row]
            if missing:
                raise WorkloadError(f"{where}: missing {', '.join(missing)}; every Mooncake row needs timestamp (ms), "
                                    "input_length, output_length and hash_ids")
            t = row["timestamp"]
            if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
                raise WorkloadError(f"{where}: timestamp must be a number of ms >= 0, got {t!r}; fix the row")
            n_in = _count(row["input_length"], "input_length", where, 1)
            n_out = _count(row["output_length"], "output_length", where, 1)
            ids = row["hash_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                    for i in ids):
                raise WorkloadError(f"{where}: hash_ids must be a list of integers >= 0; fix the row")
            need = -(-n_in // block_size)
            if len(ids) != need:
                raise WorkloadError(
                    f"{where}: {len(ids)} hash_ids do not fit input_length {n_in} at a block size of {block_size} "
                    f"tokens (it needs {need}); pass the --block-size the trace was made with, or fix the row")
            yield line, t / 1000.0, n_in, n_out, ids


def _csv_rows(file: Path, path: str, fmt: str) -> Iterator[Row]:
    t_col, in_col, out_col = _CSV_COLUMNS[fmt]
    with file.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise WorkloadError(f"{path}: nothing to replay: it has no header or rows; {fmt} traces start with "
                                f"{','.join(_CSV_COLUMNS[fmt])}")
        names = [h.strip() for h in header]
        missing = [c for c in (t_col, in_col, out_col) if c not in names]
        if missing:
            raise WorkloadError(f"{path}:1: missing column {', '.join(missing)} (header: {','.join(names)}); "
                                f"{fmt} traces need {','.join((t_col, in_col, out_col))}: check --dataset-name")
        ti, ii, oi = (names.index(c) for c in (t_col, in_col, out_col))
        width = max(ti, ii, oi) + 1
        parse_time = _wall_clock if fmt == "azure" else _float_seconds
        for row in reader:
            line = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            where = f"{path}:{line}"
            if len(row) < width:
                raise WorkloadError(f"{where}: {len(row)} fields where the header has {len(names)}; fix the row")
            t = parse_time(row[ti].strip(), t_col, where)
            yield (line, t, _count(row[ii], in_col, where, 1),
                   _count(row[oi], out_col, where, 0 if fmt == "burstgpt" else 1), None)


def _wall_clock(text: str, name: str, where: str) -> float:
    """``2023-11-16 18:15:46.6805900`` → seconds (Python reads at most 6 fractional digits)."""
    head, dot, frac = text.partition(".")
    try:
        base = datetime.fromisoformat(head)
        fraction = float("0." + frac) if dot and frac.isdigit() else (None if dot else 0.0)
    except ValueError:
        fraction = None
    if fraction is None:
        raise WorkloadError(f"{where}: {name} '{text}' is not a time like 2023-11-16 18:15:46.6805900; fix the row")
    return base.timestamp() + fraction


def _float_seconds(text: str, name: str, where: str) -> float:
    try:
        t = float(text)
    except ValueError:
        t = math.nan
    if not (math.isfinite(t) and t >= 0):
        raise WorkloadError(f"{where}: {name} must be a number of seconds >= 0, got {text!r}; fix the row")
    return t
