"""Results of NVIDIA AIPerf and guidellm, read beside loadgen's, vLLM's and SGLang's.

Each is turned into a flat record with the key names :func:`analysis.formats.normalize`
reads (``mean_ttft_ms``, ``output_throughput``, ``max_concurrency`` …) plus
``"tool"``, so everything downstream — the summary, the report, ``loadgen compare`` —
treats them as runs like any other; the ``client`` comparability check keeps
saying that they were measured by another program.

* AIPerf ``profile_export_aiperf.json``: one object, one entry per metric
  (``{"unit": "ms", "avg": …, "p50": …, "p99": …}``), the run's settings under
  ``input_config``. Its ``inter_token_latency`` is per request (end − first) /
  (tokens − 1), which is our TPOT; ``inter_chunk_latency`` lists are our ITL.
* AIPerf ``profile_export.jsonl``: one line per request (``metadata`` with epoch-ns
  stamps, ``metrics`` with ``{"value", "unit"}``, ``error``). Beside an aggregate it
  is that run's per-request data; alone it is a run, its figures computed here.
* guidellm ``benchmarks.json``: ``benchmarks`` — one per load point — each with
  ``metrics.<name>.successful`` distributions (``mean``, ``median``,
  ``percentiles.p99`` …; ``request_latency`` in seconds, the rest in ms) and its
  strategy (``concurrent`` streams, ``constant``/``poisson`` rate, ``synchronous``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

AIPERF = "aiperf"
GUIDELLM = "guidellm"
TOOLS = (AIPERF, GUIDELLM)
AIPERF_REQUESTS = "profile_export.jsonl"

_MS = {"ms": 1.0, "msec": 1.0, "s": 1000.0, "sec": 1000.0, "seconds": 1000.0, "ns": 1e-6, "us": 1e-3, "µs": 1e-3}
_STATS = ("mean", "p50", "p90", "p95", "p99", "min", "max", "std")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


# --- AIPerf ----------------------------------------------------------------------------------------

_AIPERF_LATENCIES = {"time_to_first_token": "ttft", "inter_token_latency": "tpot", "request_latency": "e2el",
                     "inter_chunk_latency": "itl"}


def is_aiperf_aggregate(obj: Mapping[str, Any]) -> bool:
    return isinstance(obj.get("input_config"), Mapping) or (
        isinstance(obj.get("request_latency"), Mapping) and "unit" in obj["request_latency"])


def is_aiperf_request(obj: Mapping[str, Any]) -> bool:
    return isinstance(obj.get("metadata"), Mapping) and "request_start_ns" in obj["metadata"] \
        and "metrics" in obj


def _aiperf_stat(entry: Any, stat: str) -> float | None:
    if not isinstance(entry, Mapping):
        return None
    return _num(entry.get("avg" if stat == "mean" else stat))


def aiperf_run(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A flat record from ``profile_export_aiperf.json``."""
    flat: dict[str, Any] = {"tool": AIPERF}
    for name, metric in _AIPERF_LATENCIES.items():
        entry = obj.get(name)
        if not isinstance(entry, Mapping):
            continue
        scale = _MS.get(str(entry.get("unit", "ms")).lower(), 1.0)
        for stat in _STATS:
            value = _aiperf_stat(entry, stat)
            if value is not None:
                flat[f"{stat}_{metric}_ms"] = value * scale
        if _aiperf_stat(entry, "p50") is not None:
            flat[f"median_{metric}_ms"] = flat[f"p50_{metric}_ms"]
    duration = _aiperf_stat(obj.get("benchmark_duration"), "mean")
    flat["duration"] = duration
    for key, name in (("request_throughput", "request_throughput"), ("output_token_throughput", "output_throughput"),
                      ("request_count", "completed"), ("error_request_count", "failed"),
                      ("total_isl", "total_input_tokens"), ("total_osl", "total_output_tokens")):
        value = _aiperf_stat(obj.get(key), "mean")
        if value is not None:
            flat[name] = value
    goodput = obj.get("goodput")
    if isinstance(goodput, Mapping) and "request" in str(goodput.get("unit", "")):
        flat["request_goodput"] = _aiperf_stat(goodput, "mean")
    cfg = _map(obj.get("input_config"))
    load = _map(_get(cfg, "loadgen"))
    flat["max_concurrency"] = _num(load.get("concurrency"))
    flat["request_rate"] = _num(load.get("request_rate")) or "inf"
    flat["input_len"] = _num(_get(cfg, "input", "prompt", "input_tokens", "mean"))
    flat["output_len"] = _num(_get(cfg, "input", "prompt", "output_tokens", "mean"))
    names = _get(cfg, "endpoint", "model_names")
    flat["model"] = names[0] if isinstance(names, list) and names else None
    flat["backend"] = _get(cfg, "endpoint", "type")
    flat["partial"] = bool(obj.get("was_cancelled"))
    return {k: v for k, v in flat.items() if v is not None}


def _stamp(value: Any) -> int | None:
    """Epoch nanoseconds kept as integers: a float64 of 1.7e18 is off by hundreds of ns."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def aiperf_requests(lines: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per request of ``profile_export.jsonl`` (warm-up phase left out), with the columns
    ``analysis.requests`` gives for loadgen's store: sent/last (ms from the first send), latencies, ITLs."""
    rows = []
    for line in lines:
        meta = _map(line.get("metadata"))
        if str(meta.get("benchmark_phase", "profiling")) not in ("profiling", "measurement"):
            continue
        metrics = _map(line.get("metrics"))

        def value(name: str, metrics: Mapping[str, Any] = metrics) -> Any:
            entry = metrics.get(name)
            if not isinstance(entry, Mapping):
                return None
            v = entry.get("value")
            scale = _MS.get(str(entry.get("unit", "")).lower(), 1.0)
            if isinstance(v, list):
                return [float(x) * scale for x in v if _num(x) is not None]
            num = _num(v)
            return None if num is None else num * (scale if entry.get("unit") in _MS else 1.0)

        start, end = _stamp(meta.get("request_start_ns")), _stamp(meta.get("request_end_ns"))
        ok = line.get("error") is None and not meta.get("was_cancelled")
        rows.append({"start_ns": start, "end_ns": end, "ok": ok,
                     "ttft_ms": value("time_to_first_token") if ok else None,
                     "tpot_ms": value("inter_token_latency") if ok else None,
                     "e2el_ms": value("request_latency") if ok else None,
                     "itls_ms": (value("inter_chunk_latency") or []) if ok else [],
                     "input_len": value("input_sequence_length"),
                     "output_tokens": value("output_sequence_length") or value("output_token_count") or 0})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    t0 = frame["start_ns"].min()
    frame["sent_ms"] = (frame["start_ns"] - t0).astype("float64") / 1e6
    frame["last_ms"] = (frame["end_ns"] - t0).astype("float64") / 1e6
    return frame.drop(columns=["start_ns", "end_ns"])


def run_from_requests(frame: pd.DataFrame) -> dict[str, Any]:
    """A flat record computed from per-request rows alone (an AIPerf JSONL without its aggregate)."""
    ok = frame[frame["ok"]]
    duration = float((frame["last_ms"].max() - frame["sent_ms"].min()) / 1000.0) if len(frame) else 0.0
    flat: dict[str, Any] = {"tool": AIPERF, "completed": len(ok), "failed": len(frame) - len(ok),
                            "duration": duration, "request_rate": "inf"}
    for metric in ("ttft", "tpot", "e2el", "itl"):
        if metric == "itl":
            vals = np.asarray([g for gaps in ok["itls_ms"] for g in gaps], np.float64)
        else:
            vals = pd.to_numeric(ok[f"{metric}_ms"], errors="coerce").dropna().to_numpy(np.float64)
        if vals.size:
            flat[f"mean_{metric}_ms"] = float(vals.mean())
            flat[f"median_{metric}_ms"] = float(np.percentile(vals, 50))
            for q in (50, 90, 95, 99):
                flat[f"p{q}_{metric}_ms"] = float(np.percentile(vals, q))
    out_tokens = float(pd.to_numeric(ok["output_tokens"], errors="coerce").fillna(0).sum())
    in_tokens = float(pd.to_numeric(ok["input_len"], errors="coerce").fillna(0).sum())
    flat["total_output_tokens"], flat["total_input_tokens"] = out_tokens, in_tokens
    if duration > 0:
        flat["output_throughput"] = out_tokens / duration
        flat["request_throughput"] = len(ok) / duration
    return flat


# --- guidellm --------------------------------------------------------------------------------------

_GUIDELLM_LATENCIES = {"time_to_first_token_ms": ("ttft", 1.0), "time_per_output_token_ms": ("tpot", 1.0),
                       "inter_token_latency_ms": ("itl", 1.0), "request_latency": ("e2el", 1000.0)}
_DATA_SPEC = re.compile(r"(prompt_tokens|output_tokens)\s*=\s*(\d+)")


def is_guidellm(obj: Mapping[str, Any]) -> bool:
    benches = obj.get("benchmarks")
    return isinstance(benches, list) and bool(benches) and all(
        isinstance(b, Mapping) and isinstance(b.get("metrics"), Mapping) for b in benches)


def _dist(metrics: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    return _map(_get(metrics, name, "successful"))


def _lengths(obj: Mapping[str, Any], bench: Mapping[str, Any]) -> dict[str, float | None]:
    """Asked lengths from the synthetic data spec (``prompt_tokens=256,output_tokens=128``)."""
    for source in (_get(bench, "config", "requests", "data"), _get(obj, "args", "data"),
                   _get(bench, "request_loader", "data")):
        text = " ".join(map(str, source)) if isinstance(source, list) else str(source or "")
        found = dict(_DATA_SPEC.findall(text))
        if found:
            return {"input_len": float(found["prompt_tokens"]) if "prompt_tokens" in found else None,
                    "output_len": float(found["output_tokens"]) if "output_tokens" in found else None}
    return {}


def guidellm_runs(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat record per benchmark (load point) of a guidellm report."""
    out = []
    for bench in obj.get("benchmarks", []):
        metrics = bench["metrics"]
        flat: dict[str, Any] = {"tool": GUIDELLM}
        for name, (metric, scale) in _GUIDELLM_LATENCIES.items():
            dist = _dist(metrics, name)
            pct = _map(dist.get("percentiles"))
            for stat in ("mean", "median", "min", "max", "std_dev"):
                if _num(dist.get(stat)) is not None:
                    flat[f"{'std' if stat == 'std_dev' else stat}_{metric}_ms"] = float(dist[stat]) * scale
            for q in ("p50", "p90", "p95", "p99"):
                if _num(pct.get(q)) is not None:
                    flat[f"{q}_{metric}_ms"] = float(pct[q]) * scale
        for name, key in (("output_tokens_per_second", "output_throughput"),
                          ("requests_per_second", "request_throughput")):
            value = _num(_dist(metrics, name).get("mean"))
            if value is not None:
                flat[key] = value
        totals = _map(metrics.get("request_totals"))
        flat["completed"] = _num(totals.get("successful"))
        flat["failed"] = (_num(totals.get("errored")) or 0) + (_num(totals.get("incomplete")) or 0)
        for name, key in (("prompt_token_count", "total_input_tokens"), ("output_token_count", "total_output_tokens")):
            total = _num(_dist(metrics, name).get("total_sum"))
            if total is not None:
                flat[key] = total
        start, end = _num(bench.get("start_time")), _num(bench.get("end_time"))
        flat["duration"] = _num(bench.get("duration")) or (end - start if start is not None and end is not None
                                                            else None)
        strategy = _map(_get(bench, "config", "strategy") or _get(bench, "args", "strategy"))
        kind = str(strategy.get("type_") or strategy.get("type") or "")
        if kind == "concurrent":
            flat["max_concurrency"] = _num(strategy.get("streams"))
        elif kind == "synchronous":
            flat["max_concurrency"] = 1
        if kind in ("constant", "poisson") and _num(strategy.get("rate")) is not None:
            flat["request_rate"] = float(strategy["rate"])
        else:
            flat["request_rate"] = "inf"
        flat.update(_lengths(obj, bench))
        flat["model"] = _get(bench, "config", "backend", "model") or _get(obj, "args", "model")
        flat["label"] = None
        out.append({k: v for k, v in flat.items() if v is not None})
    return out


# --- the hooks analysis.load calls ----------------------------------------------------------------

def expand(records: list[tuple[int, dict[str, Any]]], path: Path) -> list[tuple[int, dict[str, Any]]]:
    """A file's records with AIPerf's and guidellm's turned into flat run records; others unchanged."""
    if records and all(is_aiperf_request(r) for _, r in records):
        frame = aiperf_requests([r for _, r in records])
        return [(0, run_from_requests(frame))] if not frame.empty else []
    out: list[tuple[int, dict[str, Any]]] = []
    for index, record in records:
        if is_guidellm(record):
            out.extend((len(out), run) for run in guidellm_runs(record))
        elif is_aiperf_aggregate(record):
            out.append((index, aiperf_run(record)))
        else:
            out.append((index, record))
    return out


def is_companion(path: Path) -> bool:
    """AIPerf's per-request file is read through the aggregate beside it, not as a run of its own."""
    return path.name == AIPERF_REQUESTS and (path.parent / "profile_export_aiperf.json").is_file()


def requests_beside(result: Path, record: Mapping[str, Any]) -> pd.DataFrame | None:
    """Per-request rows for an AIPerf run (its ``profile_export.jsonl``); None for any other result."""
    if not (record.get("tool") == AIPERF or is_aiperf_aggregate(record) or is_aiperf_request(record)):
        return None
    side = result if result.name == AIPERF_REQUESTS else result.parent / AIPERF_REQUESTS
    if not side.is_file():
        return None
    import json

    lines = []
    for text in side.read_text(encoding="utf-8").splitlines():
        if text.strip():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                return None
    return aiperf_requests([obj for obj in lines if isinstance(obj, Mapping)])
