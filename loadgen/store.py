"""The per-request store: one row per request, appended as the run goes.

Files next to the result JSON ``NAME.json``:

* ``NAME.requests.npy`` — always: one fixed-width row per request (:data:`REQUEST_DTYPE`),
  a standard NumPy ``.npy`` file. ``numpy.load`` (or :func:`read_requests`, or
  ``analysis.requests``) reads a million rows in milliseconds; pandas takes it as is
  (``pandas.DataFrame(numpy.load(path))``).
* ``NAME.chunks.npy`` — with ``--save-requests``: one row per content chunk
  (:data:`CHUNK_DTYPE`), its arrival and the tokens it carried.
* ``NAME.details.jsonl`` — one line per request that has text worth keeping: an
  error's detail, or the generated text with ``--save-text``.

Why ``.npy`` and not Parquet (measured, ``perf/store.py``; docs/loadgen.md):
writing costs no import in the client — pyarrow adds ~70 MB of resident memory and
~0.14 s of start-up, which alone would break the client's memory budget — appends are
raw ``write`` calls, and reading is a memory map. Parquet is smaller on disk; a
notebook that wants it writes it from the DataFrame in one call.

The header's row count is rewritten after every append, so a run killed at any
moment leaves a store that reads back up to its last batch. A store that cannot be
written (disk full, permissions) stops writing and says why; the run goes on, and
its figures (which come from the in-memory aggregates) are complete.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from loadgen.records import RequestRecord

REQUEST_DTYPE = np.dtype([
    ("prompt_id", "<i8"),
    ("warmup", "?"),
    ("ok", "?"),
    ("status", "<i2"),
    ("retries", "<i2"),
    ("input_len", "<i4"),
    ("output_len", "<i4"),  # asked (max_tokens)
    ("output_tokens", "<i4"),  # generated
    ("server_prompt_tokens", "<i4"),  # -1: the server did not say
    ("chunks", "<i4"),
    # ms from the point's start (negative for warm-up requests); NaN: never happened
    ("intended_ms", "<f8"),
    ("sent_ms", "<f8"),
    ("first_ms", "<f8"),
    ("last_ms", "<f8"),
    ("error", "S24"),
    ("finish_reason", "S16"),
    ("output_tokens_source", "S10"),
    ("invisible_tokens", "<i4"),  # output tokens that came without visible text
    ("cached_tokens", "<i4"),  # prompt tokens from the prefix cache; -1: the server did not say
    ("answer_ms", "<f8"),  # first answer chunk (reasoning models); NaN: none came, or none was told apart
    ("reasoning_tokens", "<i4"),  # the server's count where given, else the reasoning chunks'
    ("session", "<i4"),  # sessions: the session's id and the turn's index (-1: not a session)
    ("turn", "<i2"),
    ("session_end", "S16"),  # on a session's last turn: completed | failed | context_exceeded
    ("released_ms", "<f8"),  # when the release loop let it go (sent_ms adds connect + write); NaN: not stamped
])
CHUNK_DTYPE = np.dtype([
    ("prompt_id", "<i8"),
    ("t_ms", "<f8"),  # arrival, ms from the request's send
    ("tokens", "<i4"),
])
HEADER_BYTES = 4096  # fixed, so the row count can be rewritten in place
_MAGIC = b"\x93NUMPY\x02\x00"


def _header(dtype: np.dtype, rows: int) -> bytes:
    body = repr({"descr": dtype.descr, "fortran_order": False, "shape": (rows,)}).encode("latin-1")
    pad = HEADER_BYTES - len(_MAGIC) - 4 - len(body) - 1
    return _MAGIC + (HEADER_BYTES - len(_MAGIC) - 4).to_bytes(4, "little") + body + b" " * pad + b"\n"


class NpyAppender:
    """An ``.npy`` file of one structured dtype, grown by appends."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path = path
        self.dtype = dtype
        self.rows = 0
        self.f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.f.write(_header(dtype, 0))

    def append(self, arr: np.ndarray) -> None:
        if not arr.size:
            return
        self.f.write(arr.tobytes())
        self.rows += int(arr.size)
        self.f.seek(0)
        self.f.write(_header(self.dtype, self.rows))
        self.f.seek(0, os.SEEK_END)
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _rel_ms(values: np.ndarray, start_ns: int) -> np.ndarray:
    out = (values - start_ns) / 1e6
    out[values == 0] = np.nan
    return out


def request_rows(records: Sequence[RequestRecord], start_ns: int) -> np.ndarray:
    """Records → store rows (vectorised per column)."""
    n = len(records)
    rows = np.zeros(n, REQUEST_DTYPE)
    if not n:
        return rows

    def col(get: Any, dtype: Any) -> np.ndarray:
        return np.fromiter(map(get, records), dtype, n)

    rows["prompt_id"] = col(lambda r: r.prompt_id, np.int64)
    rows["warmup"] = col(lambda r: r.warmup, bool)
    rows["ok"] = col(lambda r: r.error is None and r.first_ns > 0, bool)
    rows["status"] = col(lambda r: r.status, np.int16)
    rows["retries"] = col(lambda r: r.retries, np.int16)
    rows["input_len"] = col(lambda r: r.input_len, np.int32)
    rows["output_len"] = col(lambda r: r.output_len, np.int32)
    rows["output_tokens"] = col(lambda r: r.output_tokens, np.int32)
    rows["server_prompt_tokens"] = col(lambda r: -1 if r.server_prompt_tokens is None else r.server_prompt_tokens,
                                       np.int32)
    rows["chunks"] = col(lambda r: len(r.chunk_ns), np.int32)
    for name in ("intended", "sent", "first", "last"):
        rows[f"{name}_ms"] = _rel_ms(col(lambda r, a=f"{name}_ns": getattr(r, a), np.int64), start_ns)
    rows["error"] = [(r.error or "").encode()[:24] for r in records]
    rows["finish_reason"] = [(r.finish_reason or "").encode()[:16] for r in records]
    rows["output_tokens_source"] = [r.output_tokens_source.encode()[:10] for r in records]
    rows["invisible_tokens"] = col(lambda r: r.invisible_tokens, np.int32)
    rows["cached_tokens"] = col(lambda r: -1 if r.cached_tokens is None else r.cached_tokens, np.int32)
    rows["answer_ms"] = _rel_ms(col(lambda r: r.answer_ns, np.int64), start_ns)
    rows["reasoning_tokens"] = col(
        lambda r: r.reasoning_chunk_tokens if (c := r.server_reasoning_tokens) is None else c, np.int32)
    rows["session"] = col(lambda r: r.session, np.int32)
    rows["turn"] = col(lambda r: r.turn, np.int16)
    rows["session_end"] = [r.session_end.encode()[:16] for r in records]
    rows["released_ms"] = _rel_ms(col(lambda r: r.released_ns, np.int64), start_ns)
    return rows


def chunk_rows(records: Sequence[RequestRecord]) -> np.ndarray:
    """Every content chunk of ``records``: arrival (ms from send) and tokens."""
    counts = [len(r.chunk_ns) for r in records]
    total = sum(counts)
    rows = np.zeros(total, CHUNK_DTYPE)
    if not total:
        return rows
    rows["prompt_id"] = np.repeat(np.fromiter((r.prompt_id for r in records), np.int64, len(records)), counts)
    stamps = np.concatenate([np.asarray(r.chunk_ns, np.int64) for r in records])
    sent = np.repeat(np.fromiter((r.sent_ns for r in records), np.int64, len(records)), counts)
    rows["t_ms"] = (stamps - sent) / 1e6
    rows["tokens"] = np.concatenate([
        np.asarray(r.chunk_tokens, np.int32) if len(r.chunk_tokens) == len(r.chunk_ns) else np.ones(len(r.chunk_ns), np.int32)
        for r in records])
    return rows


def _texts(r: RequestRecord) -> dict[str, str]:
    """A request's texts in its details line: ``text`` the answer, ``reasoning_text`` the
    reasoning (only when there was some)."""
    return {"text": r.text, "reasoning_text": r.reasoning_text} if r.reasoning_text else {"text": r.text}


_BASE_NS = 10**15  # rebuilt stamps: ms from the start shifted past zero (warm-up rows are negative)


def records_from_rows(rows: np.ndarray, chunks: np.ndarray | None = None) -> list[RequestRecord]:
    """Store rows back into records, so figures can be rebuilt from a store alone (every worker died).

    Times come back as ``perf_counter``-like stamps on a shifted origin: every figure is a
    difference, so the origin does not matter. Chunk stamps exist only where the chunk
    store was written (``--save-requests``); they follow the request rows in the order
    written, so row ``i`` owns the next ``rows["chunks"][i]`` of them. Without them a
    record has no chunks, and inter-token latencies cannot be rebuilt.
    """
    def ns(values: np.ndarray) -> np.ndarray:
        out = np.where(np.isfinite(values), np.rint(values * 1e6) + _BASE_NS, 0)
        return out.astype(np.int64)

    have = rows.dtype.names or ()  # a store written before a column was added lacks it
    names = [n for n in ("intended", "released", "sent", "first", "last", "answer") if f"{n}_ms" in have]
    stamps = {name: ns(np.asarray(rows[f"{name}_ms"], np.float64)) for name in names}
    counts = np.asarray(rows["chunks"], np.int64)
    ends = np.cumsum(counts)
    have_chunks = chunks is not None and len(chunks) >= (int(ends[-1]) if len(ends) else 0)
    out = []
    for i, row in enumerate(rows):
        error = bytes(row["error"]).decode(errors="replace") or None
        rec = RequestRecord(
            prompt_id=int(row["prompt_id"]), input_len=int(row["input_len"]), output_len=int(row["output_len"]),
            intended_ns=int(stamps["intended"][i]), sent_ns=int(stamps["sent"][i]), first_ns=int(stamps["first"][i]),
            released_ns=int(stamps["released"][i]) if "released" in stamps else 0,
            last_ns=int(stamps["last"][i]), output_tokens=int(row["output_tokens"]),
            output_tokens_source=bytes(row["output_tokens_source"]).decode(errors="replace"),
            server_prompt_tokens=None if row["server_prompt_tokens"] < 0 else int(row["server_prompt_tokens"]),
            cached_tokens=None if row["cached_tokens"] < 0 else int(row["cached_tokens"]),
            finish_reason=bytes(row["finish_reason"]).decode(errors="replace") or None, status=int(row["status"]),
            error=error, retries=int(row["retries"]), invisible_tokens=int(row["invisible_tokens"]),
            answer_ns=int(stamps["answer"][i]), reasoning_chunk_tokens=int(row["reasoning_tokens"]),
            warmup=bool(row["warmup"]), session=int(row["session"]), turn=int(row["turn"]),
            session_end=bytes(row["session_end"]).decode(errors="replace"),
        )
        if have_chunks and counts[i]:
            part = chunks[int(ends[i] - counts[i]):int(ends[i])]  # type: ignore[index]
            rec.chunk_ns.extend((np.rint(np.asarray(part["t_ms"], np.float64) * 1e6) + rec.sent_ns).astype(np.int64).tolist())
            rec.chunk_tokens.extend(np.asarray(part["tokens"], np.int32).tolist())
        out.append(rec)
    return out


@dataclass
class StoreFiles:
    requests: Path
    chunks: Path | None  # with --save-requests
    details: Path


class RequestStore:
    """Appends batches of finished requests to the store files of one point."""

    def __init__(self, files: StoreFiles, *, save_text: bool = False) -> None:
        self.files = files
        self.save_text = save_text
        self.rows = 0
        self.error: str | None = None  # why the store stopped being written
        self._requests: NpyAppender | None = None
        self._chunks: NpyAppender | None = None
        self._details: BinaryIO | None = None
        try:
            self._requests = NpyAppender(files.requests, REQUEST_DTYPE)
            if files.chunks is not None:
                self._chunks = NpyAppender(files.chunks, CHUNK_DTYPE)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = f"{exc.strerror or exc} ({getattr(exc, 'filename', None) or self.files.requests})"
        self.close()

    def append(self, records: Sequence[RequestRecord], start_ns: int) -> None:
        if self.error is not None or not records:
            return
        try:
            self._requests.append(request_rows(records, start_ns))  # type: ignore[union-attr]
            if self._chunks is not None:
                self._chunks.append(chunk_rows(records))
            lines = [
                orjson.dumps({"prompt_id": r.prompt_id, "error": r.error, "error_detail": r.error_detail or None,
                              **(_texts(r) if self.save_text else {})}) + b"\n"
                for r in records if r.error_detail or (self.save_text and (r.text or r.reasoning_text))
            ]
            if lines:
                if self._details is None:
                    self._details = open(self.files.details, "wb")  # noqa: SIM115 - closed in close()
                self._details.write(b"".join(lines))
                self._details.flush()
            self.rows += len(records)
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        for f in (self._requests, self._chunks, self._details):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        self._requests = self._chunks = self._details = None

    def describe(self) -> dict[str, Any]:
        """What the result JSON says about the store (file names relative to it)."""
        f = self.files
        return {
            "requests": f.requests.name,
            "chunks": f.chunks.name if f.chunks is not None else None,
            "details": f.details.name if f.details.exists() else None,
            "rows": self.rows,
            "complete": self.error is None,
            "error": self.error,
        }


def figures(rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per-request latencies (ms) from store rows, by the metrics contract; NaN where absent."""
    ok = rows["ok"]
    nan = np.full(len(rows), np.nan)
    ttft = np.where(ok, rows["first_ms"] - rows["sent_ms"], nan)
    e2el = np.where(ok, rows["last_ms"] - rows["sent_ms"], nan)
    out_tok = rows["output_tokens"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(ok & (out_tok > 1), (e2el - ttft) / (out_tok - 1), nan)
    out = {"ttft_ms": ttft, "tpot_ms": tpot, "e2el_ms": e2el, "queue_ms": rows["sent_ms"] - rows["intended_ms"]}
    if "answer_ms" in (rows.dtype.names or ()):  # stores written before reasoning was told apart lack it
        out["ttfa_ms"] = np.where(ok, rows["answer_ms"] - rows["sent_ms"], nan)
    return out


def store_layout(path: str | Path) -> tuple[np.dtype, int, int]:
    """(dtype, rows the header declares, whole rows the file holds) of a store file.

    Raises ValueError when the file is not one of our stores (wrong magic, a header
    that does not parse)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if head[:6] != _MAGIC[:6] or len(head) < HEADER_BYTES:
        raise ValueError(f"{path} is not a .npy per-request store")
    try:
        meta = ast.literal_eval(head[12:].decode("latin-1").strip())
        dtype = np.dtype([tuple(d) for d in meta["descr"]])
        rows = int(meta["shape"][0])
    except (ValueError, SyntaxError, TypeError, KeyError, IndexError):
        raise ValueError(f"{path}: the header of the .npy per-request store is damaged") from None
    return dtype, rows, (path.stat().st_size - HEADER_BYTES) // dtype.itemsize


def read_requests(path: str | Path) -> np.ndarray:
    """The store's rows (memory-mapped). A store cut short by a crash reads up to its last batch."""
    dtype, rows, size = store_layout(path)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(min(rows, size),)) \
        if min(rows, size) else np.zeros(0, dtype)
