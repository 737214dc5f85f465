"""Read result files from disk into pandas frames: runs, requests and histograms.

This is the only module of the analysis that touches files; it finds them, parses
them and hands each record to :mod:`analysis.formats`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import hdr, peers
from analysis.errors import AnalysisError
from analysis.formats import METRICS, FormatError, json_repr, normalize

PathLike = str | os.PathLike[str]

RUN_ORDER = ["label", "engine", "engine_version", "concurrency", "input_len", "output_len"]


class LoadError(AnalysisError, ValueError):
    """A path that cannot be read as results; the message names it and says what to do."""


class NothingUsable(LoadError):
    """Every file found was skipped; ``skipped`` says why for each."""

    def __init__(self, message: str, skipped: list[Skipped]) -> None:
        super().__init__(message)
        self.skipped = skipped


@dataclass(frozen=True)
class Skipped:
    """A file that was found but not used, and why (printed by ``loadgen-report``)."""

    path: Path
    reason: str
    kind: str = "skipped"  # or "damaged": a run's side file, of which what is readable is used

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class _Unusable(AnalysisError):
    """A file that cannot be read as result records; the message is the reason."""


# Files that belong to a result beside them (per-request lines, loadgen's error details and
# server-metrics side file); read through it, never runs themselves.
_COMPANION_SUFFIXES = (".requests.jsonl", "_requests.jsonl", "-requests.jsonl", ".details.jsonl", ".metrics.jsonl")
# Capacity records of ``loadgen search`` are not benchmark points: analysis.capacity reads them.
CAPACITY_SUFFIX = ".capacity.json"
CAPACITY_SCHEMA = "loadgen-capacity/1"


def _as_paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _candidate_files(root: Path) -> Iterator[Path]:
    """Result-looking files under ``root``, in a stable order, skipping our own report output."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((".json", ".jsonl")) and not name.startswith("."):
                yield Path(dirpath) / name


def _records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects in a file: one for ``.json``, one per line for JSON Lines (SGLang appends).

    Raises :class:`_Unusable` naming what is wrong: empty, not UTF-8, truncated (a writer
    stopped mid-file), or not JSON.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unusable(f"not UTF-8 text (byte {exc.start})") from None
    stripped = text.strip()
    if not stripped:
        raise _Unusable("empty file")
    try:
        obj = json.loads(stripped)
        if isinstance(obj, dict):
            return [(0, obj)]
        if isinstance(obj, list):
            return [(i, o) for i, o in enumerate(obj) if isinstance(o, dict)]
        raise _Unusable(f"holds a JSON {type(obj).__name__}, not a result object")
    except json.JSONDecodeError as whole:
        whole_error = whole
    lines = stripped.splitlines()
    out: list[Any] = []
    for i, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if not out:  # not JSON Lines either: say what is wrong with the file as a whole
                raise _Unusable(_json_problem(stripped, whole_error)) from None
            where = "the last line" if i == len(lines) - 1 else f"line {i + 1}"
            raise _Unusable(f"{where} is not JSON ({_json_problem(line, exc)})") from None
        if isinstance(obj, dict):
            out.append((i, obj))
    return out


def _json_problem(text: str, exc: json.JSONDecodeError) -> str:
    """``truncated JSON at byte N`` when the text stops mid-value (N: where it stops), else
    where the JSON goes wrong."""
    if exc.msg.startswith("Unterminated") or exc.pos >= len(text) - 1:
        return f"truncated JSON at byte {len(text.encode())}"
    return f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})"


def _run_rows(path: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(row, raw record) for each result record in ``path``.

    Raises :class:`_Unusable` with the reason when the file is not a usable result: one
    damaged record (a wrong type in a known key, an undecodable histogram) spoils the
    file rather than being read as absent figures.
    """
    try:
        records = peers.expand(_records(path), path)
    except OSError as exc:
        raise _Unusable(f"cannot be read ({exc.strerror or exc}); check its permissions") from None
    rows = []
    for index, record in records:
        if record.get("schema") == CAPACITY_SCHEMA:
            raise _Unusable("a capacity record of `loadgen search`, not a benchmark point (see the capacity report)")
        try:
            row = normalize(record, path.name)
            _check_histograms(record)
        except FormatError as exc:
            where = f"record {index + 1}: " if len(records) > 1 else ""
            raise _Unusable(f"{where}not a usable result ({exc})") from None
        row["path"] = str(path)
        row["record"] = index
        row["run_id"] = f"{path}#{index}" if len(records) > 1 else str(path)
        if not row.get("label"):
            row["label"] = row.get("engine") if _generic_dir(path.parent.name) else path.parent.name
        if not row.get("label"):
            row["label"] = path.parent.name or "run"
        rows.append((row, record))
    return rows


def _generic_dir(name: str) -> bool:
    return name in ("", ".", "results", "result", "out", "output", "runs", "tmp")


def _check_histograms(record: Mapping[str, Any]) -> None:
    """Every embedded histogram must decode: a damaged one is a damaged file, not a missing figure."""
    for key in ("histograms", "hdr_histograms", "hdr"):
        block = record.get(key)
        if not isinstance(block, Mapping):
            continue
        for name, value in block.items():
            payload = value
            if isinstance(value, Mapping):
                payload = value.get("histogram") or value.get("encoded") or value.get("data")
            if _metric_of(str(name)) is None or payload is None:
                continue
            if not isinstance(payload, str):
                raise FormatError(f"'{key}.{name}' is {json_repr(payload)}, not an encoded histogram")
            try:
                hdr.decode(payload)
            except Exception:  # noqa: BLE001 - any failure to decode means the same thing
                raise FormatError(f"'{key}.{name}' is not a valid HdrHistogram encoding (damaged?)") from None


def _collect(paths: PathLike | Iterable[PathLike],
             skipped: list[Skipped] | None = None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Rows of every usable file under ``paths``; each unusable one is added to ``skipped`` with its reason."""
    found: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for order, path in enumerate(_as_paths(paths)):
        if path.is_dir():
            files = [f for f in _candidate_files(path)
                     if not f.name.endswith((*_COMPANION_SUFFIXES, CAPACITY_SUFFIX)) and not peers.is_companion(f)]
        elif path.is_file():
            files = [path] if not path.name.endswith(CAPACITY_SUFFIX) else []
        else:
            raise LoadError(f"{path}: no such file or directory; give result files or folders that hold them")
        for file in files:
            try:
                rows = _run_rows(file)
            except _Unusable as exc:
                if skipped is not None:
                    skipped.append(Skipped(file, str(exc)))
                continue
            for row, record in rows:
                row["source_order"] = order
                if skipped is not None:
                    skipped.extend(side_file_problems(file, record))
            found.extend(rows)
    return found


def side_file_problems(result: Path, record: Mapping[str, Any]) -> list[Skipped]:
    """What is wrong with a loadgen result's per-request store and server-metrics side file.

    The run itself is whole (its figures are in the result), so a damaged side file is
    named with what is left out of the views built on it, never a reason to drop the run.
    """
    from loadgen.store import store_layout

    out: list[Skipped] = []
    store = _store_paths(result, record)
    if store is not None:
        try:
            _, declared, present = store_layout(store[0])
        except (OSError, ValueError) as exc:
            out.append(Skipped(store[0], f"not a readable per-request store ({exc}); the run's per-request views "
                                         "are left out (its figures come from its result)", "damaged"))
        else:
            if present < declared:
                out.append(Skipped(store[0], f"holds {present} of the {declared} rows its header declares (cut "
                                             f"short); the per-request views use those {present}", "damaged"))
    metrics = record.get("server_metrics")
    side = metrics.get("file") if isinstance(metrics, Mapping) else None
    if isinstance(side, str) and (result.parent / side).is_file():
        problem = _jsonl_problem(result.parent / side)
        if problem:
            out.append(Skipped(result.parent / side, f"{problem}; its raw samples are left out (the server "
                                                     "timeline and summary come from the result)", "damaged"))
    return out


def _jsonl_problem(path: Path) -> str | None:
    """Why a JSON Lines file is not one (the first bad line), or None."""
    try:
        with path.open("rb") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except ValueError:
                        return f"line {n} is not JSON"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def load(paths: PathLike | Iterable[PathLike], include_partial: bool = True, *,
         skipped: list[Skipped] | None = None) -> pd.DataFrame:
    """One row per run, from files and folders (searched recursively) of any supported producer.

    A file that is not a usable result (truncated, damaged, or something else) is
    left out and, when ``skipped`` is given, appended to it with the reason; per-request
    lines beside a result are not runs and are not listed. Raises :class:`LoadError`
    when nothing usable is left. ``include_partial=False`` drops runs that stopped early.
    """
    own: list[Skipped] = []
    rows = [row for row, _ in _collect(paths, own)]
    if skipped is not None:
        skipped.extend(own)
    if not rows:
        names = ", ".join(str(p) for p in _as_paths(paths))
        why = "; ".join(f"skipped {s}" for s in own[:3]) + ("; ..." if len(own) > 3 else "")
        if own:
            raise NothingUsable(f"nothing to report from {names}: {why}", own)
        raise LoadError(f"no result files found in {names}; run loadgen with --output-dir there first")
    df = pd.DataFrame(rows)
    if not include_partial:
        df = df[~df["partial"].astype(bool)]
    # Paths keep the order they were given in (the first is the baseline of comparisons).
    df = df.sort_values(["source_order", "label", "input_len", "output_len", "concurrency"],
                        na_position="last", kind="stable")
    front = [c for c in RUN_ORDER if c in df.columns]
    return df[front + [c for c in df.columns if c not in front]].reset_index(drop=True)


def _requests_path(result: Path, record: Mapping[str, Any]) -> Path | None:
    """Where a run's per-request lines are: named in the result, or beside it by convention."""
    named = record.get("requests_file") or record.get("requests_path")
    if isinstance(named, str):
        cand = Path(named)
        return cand if cand.is_absolute() else result.parent / cand
    stem = result.name[: -len(result.suffix)]
    for name in (f"{stem}.requests.jsonl", f"{stem}_requests.jsonl", f"{stem}-requests.jsonl", f"{stem}.jsonl"):
        cand = result.parent / name
        if cand.is_file() and cand != result:
            return cand
    return None


def _requests_from_lists(record: Mapping[str, Any]) -> pd.DataFrame:
    """Per-request figures from the lists vLLM's --save-result keeps (seconds) in one result."""
    ttfts = record.get("ttfts") or []
    n = len(ttfts)
    if not n:
        return pd.DataFrame()
    itls = record.get("itls") or [[] for _ in range(n)]
    errors = record.get("errors") or [""] * n
    in_lens = record.get("input_lens") or [None] * n
    out_lens = record.get("output_lens") or [None] * n
    rows = []
    for i in range(n):
        gaps = itls[i] if i < len(itls) and isinstance(itls[i], list) else []
        ttft = ttfts[i] if isinstance(ttfts[i], int | float) else None
        out_len = out_lens[i] if i < len(out_lens) else None
        e2el = (ttft + sum(gaps)) * 1000.0 if ttft is not None and ttft > 0 else None
        tpot = (sum(gaps) * 1000.0 / (out_len - 1)) if out_len and out_len > 1 else None
        err = errors[i] if i < len(errors) else ""
        rows.append({
            "request": i,
            "input_len": in_lens[i] if i < len(in_lens) else None,
            "output_len": out_len,
            "ttft_ms": ttft * 1000.0 if ttft is not None and ttft > 0 else None,
            "tpot_ms": tpot,
            "e2el_ms": e2el,
            "itls_ms": [g * 1000.0 for g in gaps],
            "ok": not err,
            "error": err or None,
        })
    return pd.DataFrame(rows)


def _requests_from_lines(path: Path) -> pd.DataFrame:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise LoadError(f"{path}: a line is not JSON; the per-request file is damaged") from None
    frame = pd.DataFrame(rows)
    if "ok" not in frame.columns and "error" in frame.columns:
        frame["ok"] = frame["error"].isna() | (frame["error"] == "")
    return frame


def _store_paths(result: Path, record: Mapping[str, Any]) -> tuple[Path, Path | None] | None:
    """loadgen's per-request store (``NAME.requests.npy``, with ``NAME.chunks.npy``), if the result names one."""
    store = record.get("per_request")
    if not isinstance(store, dict) or not isinstance(store.get("requests"), str):
        return None
    path = result.parent / store["requests"]
    chunks = result.parent / store["chunks"] if isinstance(store.get("chunks"), str) else None
    return (path, chunks if chunks is not None and chunks.is_file() else None) if path.is_file() else None


def _requests_from_store(path: Path, chunks: Path | None) -> pd.DataFrame:
    """One row per request from the store; ``itls_ms`` per request when the chunks were saved."""
    from loadgen.store import figures, read_requests

    try:
        rows = read_requests(path)
    except (OSError, ValueError, SyntaxError) as exc:
        raise LoadError(f"{path}: the per-request store is damaged ({exc})") from None
    frame = pd.DataFrame(np.asarray(rows))
    for col in ("error", "finish_reason", "output_tokens_source"):
        frame[col] = frame[col].str.decode("utf-8").replace("", None)
    frame["server_prompt_tokens"] = frame["server_prompt_tokens"].where(frame["server_prompt_tokens"] >= 0)
    if "cached_tokens" in frame.columns:  # -1: the server did not report it
        frame["cached_tokens"] = frame["cached_tokens"].where(frame["cached_tokens"] >= 0)
    for name, values in figures(rows).items():
        frame[name] = values
    if chunks is not None:
        frame["itls_ms"] = _itls_from_chunks(read_requests(chunks), frame["prompt_id"].to_numpy())
    return frame


def _itls_from_chunks(chunks: np.ndarray, prompt_ids: np.ndarray) -> list[list[float]]:
    """Each request's gaps between token-bearing chunks, split evenly over a chunk's tokens."""
    by_id: dict[int, list[float]] = {}
    c = chunks[chunks["tokens"] > 0]
    c = c[np.argsort(c["prompt_id"], kind="stable")]
    for part in np.split(c, np.flatnonzero(np.diff(c["prompt_id"])) + 1):
        if part.size > 1:
            k = part["tokens"][1:]
            by_id[int(part["prompt_id"][0])] = np.repeat(np.diff(part["t_ms"]) / k, k).tolist()
    return [by_id.get(int(pid), []) for pid in prompt_ids]


def requests_of(result: Path, record: Mapping[str, Any]) -> pd.DataFrame:
    """One run's requests: its per-request store, else per-request lines beside it, else its lists."""
    beside = peers.requests_beside(result, record)
    if beside is not None:
        return beside
    store = _store_paths(result, record)
    if store is not None:
        return _requests_from_store(*store)
    side = _requests_path(result, record)
    return _requests_from_lines(side) if side is not None else _requests_from_lists(record)


def requests(paths: PathLike | Iterable[PathLike], include_warmup: bool = False) -> pd.DataFrame:
    """One row per request: from loadgen's per-request store, other tools' per-request files, or the
    lists inside results.

    Each row carries its run's ``run_id``, ``label`` and ``concurrency`` so that
    requests from many runs can be grouped like the runs themselves.
    """
    frames = []
    for row, record in _collect(paths):
        frame = requests_of(Path(row["path"]), record)
        if frame.empty:
            continue
        if not include_warmup and "warmup" in frame.columns:
            frame = frame[~frame["warmup"].fillna(False).astype(bool)]
        frame = frame.copy()
        for key in ("run_id", "label", "engine", "concurrency", "input_len", "output_len"):
            frame[f"run_{key}" if key in frame.columns and key != "run_id" else key] = row.get(key)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run_id", "label", "concurrency", "ttft_ms", "tpot_ms", "e2el_ms"])
    return pd.concat(frames, ignore_index=True)


# --- histograms -------------------------------------------------------------------------------

_UNIT_KEYS = ("histogram_unit", "histograms_unit", "hdr_unit", "unit")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "usec": 1e-3, "µs": 1e-3, "ms": 1.0, "msec": 1.0, "s": 1000.0, "sec": 1000.0}


def _unit_scale(record: Mapping[str, Any], default: str = "us") -> float:
    for key in ("histogram_unit", "histograms_unit", "hdr_unit", "histogram_units", "unit"):
        unit = record.get(key)
        if isinstance(unit, str) and unit.lower() in _UNIT_MS:
            return _UNIT_MS[unit.lower()]
    return _UNIT_MS[default]


def _metric_of(tag: str) -> str | None:
    low = tag.lower()
    for metric in METRICS:
        if metric in low:
            return metric
    if "e2e" in low:
        return "e2el"
    if "queue" in low:
        return "queue"
    return None


def _embedded(record: Mapping[str, Any]) -> dict[str, tuple[Any, float]]:
    """Histograms embedded in a result record, keyed by metric, with their ms-per-unit."""
    out: dict[str, tuple[Any, float]] = {}
    default_scale = _unit_scale(record)
    for key in ("histograms", "hdr_histograms", "hdr"):
        block = record.get(key)
        if not isinstance(block, Mapping):
            continue
        scale = _unit_scale(block, "us") if any(k in block for k in _UNIT_KEYS) else default_scale
        for name, value in block.items():
            payload, unit_scale = value, scale
            if isinstance(value, Mapping):
                payload = value.get("histogram") or value.get("encoded") or value.get("data")
                unit_scale = _unit_scale({"histogram_unit": value.get("unit")}, "us") if value.get("unit") else scale
            metric = _metric_of(str(name))
            if metric and isinstance(payload, str) and payload.strip().startswith("HIST"):
                try:
                    out[metric] = (hdr.decode(payload), unit_scale)
                except Exception:  # noqa: BLE001 - a damaged blob falls back to the other sources
                    continue
    return out



def _from_hlog(path: Path, scale: float) -> dict[str, tuple[Any, float]]:
    """Merge every interval of an HdrHistogram interval log, per tag."""
    out: dict[str, Any] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith(("#", '"')):
                continue
            tag = None
            if line.startswith("Tag="):
                tag, _, line = line[4:].partition(",")
            parts = line.split(",")
            if len(parts) < 4:
                continue
            metric = _metric_of(tag or "")
            if metric is None:
                continue
            try:
                hist = hdr.decode(parts[3])
            except Exception:  # noqa: BLE001 - skip a damaged interval, keep the rest
                continue
            if metric in out:
                out[metric].add(hist)
            else:
                out[metric] = hist
    return {m: (h, scale) for m, h in out.items()}


def _from_lists(record: Mapping[str, Any]) -> dict[str, tuple[Any, float]]:
    reqs = _requests_from_lists(record)
    if reqs.empty:
        return {}
    ok = reqs[reqs["ok"]]
    out = {}
    for metric in ("ttft", "tpot", "e2el"):
        values = ok[f"{metric}_ms"].dropna().tolist()
        if values:
            out[metric] = (hdr.from_ms(values), 0.001)
    gaps = [g for lst in ok["itls_ms"] for g in lst]
    if gaps:
        out["itl"] = (hdr.from_ms(gaps), 0.001)
    return out


def histograms(paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """One row per (run, metric) with its HDR histogram in column ``histogram``.

    Sources, best first: histograms embedded in the result, the ``.hlog`` beside
    it, then the raw per-request lists (vLLM ``--save-result``). ``source`` says
    which; ``ms_per_unit`` converts recorded values. Merge rows with
    :func:`merge_histograms`.
    """
    rows = []
    for row, record in _collect(paths):
        path = Path(row["path"])
        found = _embedded(record)
        hlog = path.with_suffix(".hlog")
        if hlog.is_file():
            for metric, item in _from_hlog(hlog, _unit_scale(record)).items():
                found.setdefault(metric, item)
        source = "embedded/hlog" if found else "raw lists"
        if not found:
            found = _from_lists(record)
        for metric, (hist, scale) in sorted(found.items()):
            rows.append({
                "run_id": row["run_id"], "label": row["label"], "engine": row.get("engine"),
                "concurrency": row.get("concurrency"), "input_len": row.get("input_len"),
                "output_len": row.get("output_len"), "metric": metric, "histogram": hist,
                "ms_per_unit": scale, "count": hist.get_total_count(), "source": source,
            })
    return pd.DataFrame(rows, columns=[
        "run_id", "label", "engine", "concurrency", "input_len", "output_len", "metric",
        "histogram", "ms_per_unit", "count", "source",
    ])


def merge_histograms(frame: pd.DataFrame, by: list[str] | tuple[str, ...] = ("label", "metric")) -> pd.DataFrame:
    """Merge the histograms of ``frame`` (from :func:`histograms`) within each group of ``by``.

    The result has the same columns (``ms_per_unit`` becomes microseconds'
    0.001) so it can be merged again or plotted.
    """
    by = list(by)
    if "metric" not in by:
        by.append("metric")
    rows = []
    for key, group in frame.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        merged = hdr.merge(list(group["histogram"]), list(group["ms_per_unit"]))
        entry = dict(zip(by, key, strict=True))
        entry.update({"histogram": merged, "ms_per_unit": 0.001, "count": merged.get_total_count(),
                      "runs": len(group)})
        rows.append(entry)
    return pd.DataFrame(rows)


def is_complete(path: PathLike) -> bool:
    """True when ``path`` is a parseable result that did not stop early (resuming skips these)."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return False
    try:
        rows = _run_rows(p)
    except _Unusable:
        return False
    return bool(rows) and not any(r["partial"] for r, _ in rows) and all(
        (r.get("completed") or 0) > 0 and not math.isnan(r.get("completed") or 0) for r, _ in rows
    )
