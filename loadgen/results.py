"""Result files of one load point: the result JSON, per-request JSONL, the HDR interval log.

The result JSON carries every key of vLLM 0.8.x ``benchmark_serving.py --save-result``
(including its misspelt ``"request_goodput:"``), SGLang ``bench_serving``'s names for
the same figures, and loadgen's own additions. The schema is documented in
``docs/loadgen.md``; ``RESULT_SCHEMA`` versions it.
"""

from __future__ import annotations

import math
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadgen import hdr
from loadgen.config import RunConfig, rate_label, safe_filename_part
from loadgen.metrics import (
    EXTRA_METRICS,
    METRICS,
    SATURATION_LAG_P99_MS,
    RequestFigures,
    Stats,
    Summary,
    percentile_key,
)
from loadgen.records import RequestRecord

RESULT_SCHEMA = "loadgen-result/1"
HLOG_TAGS = ("ttft", "tpot", "itl", "e2el", "queue")


@dataclass
class PointInfo:
    """What identifies one load point beyond the shared configuration."""

    concurrency: int | None
    rate: float
    date: str  # %Y%m%d-%H%M%S, vLLM's format
    model: str
    tokenizer_id: str
    start_epoch_s: float
    end_epoch_s: float
    partial: bool = False
    warmup_requests: int = 0


def render_filename(template: str, cfg: RunConfig, concurrency: int | None, rate: float, model: str, date: str) -> str:
    """The result file name of one point; every field is made file-name safe."""
    fields = {
        "backend": cfg.backend,
        "model": model,
        "concurrency": "inf" if concurrency is None else concurrency,
        "rate": rate_label(rate),
        "input_len": cfg.input_len,
        "output_len": cfg.output_len,
        "num_prompts": cfg.prompts_needed(),
        "dataset": cfg.dataset,
        "label": cfg.label or cfg.backend,
        "date": date,
        "seed": cfg.seed,
        "arrival": cfg.arrival,
    }
    name = template.format(**{k: safe_filename_part(v) for k, v in fields.items()})
    if not name.endswith(".json"):
        name += ".json"
    return name


def sibling(result_path: Path, suffix: str) -> Path:
    """``x.json`` → ``x.requests.jsonl`` / ``x.hlog``: the other forms sit next to the result."""
    stem = result_path.name[: -len(".json")] if result_path.name.endswith(".json") else result_path.name
    return result_path.with_name(stem + suffix)


def _stat_keys(name: str, st: Stats) -> dict[str, float]:
    keys = {
        f"mean_{name}_ms": st.mean,
        f"median_{name}_ms": st.median,
        f"std_{name}_ms": st.std,
        f"min_{name}_ms": st.min,
        f"max_{name}_ms": st.max,
    }
    for p, value in st.percentiles.items():
        keys[f"p{percentile_key(p)}_{name}_ms"] = value
    return keys


def versions(server_version: str | None = None) -> dict[str, str | None]:
    """Versions of everything that shapes the numbers."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("loadgen", "aiohttp", "uvloop", "orjson", "hdrhistogram", "transformers", "tokenizers", "numpy"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = None
    out["server"] = server_version
    return out


def histograms(fig: RequestFigures) -> dict[str, Any]:
    """One HDR histogram per metric, in µs, recorded in bulk."""
    series = {
        "ttft": fig.ttft_ms,
        "tpot": fig.values("tpot"),
        "itl": fig.itl_ms,
        "e2el": fig.e2el_ms,
        "queue": fig.queue_ms,
    }
    return {tag: hdr.histogram_of(np.rint(np.asarray(v) * 1000.0)) for tag, v in series.items()}


def build_result(
    cfg: RunConfig,
    point: PointInfo,
    summary: Summary,
    fig: RequestFigures,
    measured: Sequence[RequestRecord],
    hists: Mapping[str, Any],
    *,
    server_version: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The result JSON of one point as a dict (plain JSON types only)."""
    pcts = cfg.percentiles
    rate_json: float | str = "inf" if math.isinf(point.rate) else point.rate
    by_id = {id(r): i for i, r in enumerate(fig.records)}
    ordered = sorted(measured, key=lambda r: r.prompt_id)
    ttfts, itls, out_lens, errors, texts = [], [], [], [], []
    for r in ordered:
        i = by_id.get(id(r))
        if i is None:
            ttfts.append(0.0)
            itls.append([])
            out_lens.append(0)
            kind = r.error or "no_output"
            errors.append(f"{kind}: {r.error_detail}" if r.error_detail else kind)
        else:
            ttfts.append(float(fig.ttft_ms[i]) / 1000.0)
            itls.append((fig.itls_of(i) / 1000.0).tolist())
            out_lens.append(int(r.output_tokens))
            errors.append("")
        texts.append(r.text)

    res: dict[str, Any] = {
        # vLLM 0.8.x benchmark_serving.py
        "date": point.date,
        "backend": cfg.backend,
        "model_id": point.model,
        "tokenizer_id": point.tokenizer_id,
        "num_prompts": len(measured),
        "request_rate": rate_json,
        "burstiness": cfg.burstiness,
        "max_concurrency": point.concurrency,
        "duration": summary.duration_s,
        "completed": summary.completed,
        "total_input_tokens": summary.total_input_tokens,
        "total_output_tokens": summary.total_output_tokens,
        "request_throughput": summary.request_throughput,
        "request_goodput:": summary.request_goodput,
        "output_throughput": summary.output_throughput,
        "total_token_throughput": summary.total_token_throughput,
        "input_lens": [int(r.input_len) for r in ordered],
        "output_lens": out_lens,
        "ttfts": ttfts,
        "itls": itls,
        "errors": errors,
    }
    if cfg.save_text:
        res["generated_texts"] = texts
    for m in METRICS:
        res.update(_stat_keys(m, summary.stats[m]))
    # vLLM-compatible extras and SGLang bench_serving names
    e2el = summary.stats["e2el"]
    res.update(
        {
            "input_throughput": summary.input_throughput,
            "request_goodput": summary.request_goodput,
            "dataset_name": cfg.dataset,
            "random_input_len": cfg.input_len,
            "random_output_len": cfg.output_len,
            "random_range_ratio": cfg.range_ratio,
            "total_throughput": summary.total_token_throughput,
            "mean_e2e_latency_ms": e2el.mean,
            "median_e2e_latency_ms": e2el.median,
            "std_e2e_latency_ms": e2el.std,
            "concurrency": float(fig.e2el_ms.sum() / 1000.0 / summary.duration_s) if summary.duration_s else 0.0,
        }
    )
    for p, value in e2el.percentiles.items():
        res[f"p{percentile_key(p)}_e2e_latency_ms"] = value
    # loadgen's own
    for m in EXTRA_METRICS:
        res.update(_stat_keys(m, summary.stats[m]))
    res.update(
        {
            "schema": RESULT_SCHEMA,
            "label": cfg.label,
            "partial": point.partial,
            "ignore_eos": cfg.effective_ignore_eos,
            "percentiles": list(pcts),
            "arrival": cfg.arrival,
            "seed": cfg.seed,
            "warmup_requests": point.warmup_requests,
            "failed": summary.failed,
            "errors_by_kind": summary.errors_by_kind,
            "retries": summary.retries,
            "good_completed": summary.good_completed,
            "goodput_slos_ms": dict(cfg.goodput_slos_ms) or None,
            "output_tokens_source": summary.output_tokens_source,
            "prompt_tokens_checked": summary.prompt_tokens_checked,
            "prompt_token_mismatches": summary.prompt_token_mismatches,
            "prompt_token_max_diff": summary.prompt_token_max_diff,
            "loop_lag_p50_ms": summary.lag_p50_ms,
            "loop_lag_p99_ms": summary.lag_p99_ms,
            "loop_lag_max_ms": summary.lag_max_ms,
            "client_saturated": summary.client_saturated,
            "client_saturation_lag_p99_ms": SATURATION_LAG_P99_MS,
            "max_concurrency_observed": summary.max_concurrency_observed,
            "itl_samples": int(fig.itl_ms.size),
            "start_time": point.start_epoch_s,
            "end_time": point.end_epoch_s,
            "metadata": dict(cfg.metadata),
            "config": cfg.to_dict(),
            "versions": versions(server_version),
            "hdr_histograms": {
                "unit": "us",
                "significant_digits": hdr.SIGNIFICANT_DIGITS,
                **{tag: hdr.encode(h) for tag, h in hists.items()},
            },
        }
    )
    if extra:
        res.update(extra)
    # vLLM writes --metadata KEY=VALUE at the top level; do the same where it clashes with nothing.
    for key, value in cfg.metadata.items():
        res.setdefault(key, value)
    return res


def request_rows(records: Sequence[RequestRecord], start_ns: int, save_text: bool) -> list[dict[str, Any]]:
    """Per-request rows (times in ms from the run's start) for the JSONL file."""
    rows = []
    for r in sorted(records, key=lambda r: (not r.warmup, r.prompt_id)):
        def rel(ns: int) -> float | None:
            return round((ns - start_ns) / 1e6, 4) if ns else None

        row: dict[str, Any] = {
            "prompt_id": r.prompt_id,
            "warmup": r.warmup,
            "input_len": r.input_len,
            "output_len": r.output_len,
            "server_prompt_tokens": r.server_prompt_tokens,
            "output_tokens": r.output_tokens,
            "output_tokens_source": r.output_tokens_source,
            "intended_ms": rel(r.intended_ns),
            "sent_ms": rel(r.sent_ns),
            "first_ms": rel(r.first_ns),
            "last_ms": rel(r.last_ns),
            "queue_ms": round((r.sent_ns - r.intended_ns) / 1e6, 4) if r.sent_ns and r.intended_ns else None,
            "ttft_ms": round((r.first_ns - r.sent_ns) / 1e6, 4) if r.first_ns and r.sent_ns else None,
            "e2el_ms": round((r.last_ns - r.sent_ns) / 1e6, 4) if r.last_ns and r.sent_ns else None,
            "chunks": len(r.chunk_ns),
            "chunk_us": [round((t - r.sent_ns) / 1e3, 1) for t in r.chunk_ns] if r.sent_ns else [],
            "chunk_tokens": list(r.chunk_tokens),
            "finish_reason": r.finish_reason,
            "status": r.status,
            "error": r.error,
            "error_detail": r.error_detail or None,
            "retries": r.retries,
        }
        if save_text:
            row["text"] = r.text
        rows.append(row)
    return rows


def check_writable(directory: str | Path) -> Path:
    """Create the output folder and prove a file can be written there (before any work)."""
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".loadgen-probe-"):
            pass
    except OSError as exc:
        raise PermissionError(f"output folder '{path}' is not writable ({exc.strerror}); pick another with --output-dir") from None
    return path


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    _atomic_write(path, orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def write_requests(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    _atomic_write(path, b"".join(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for row in rows))


def write_hlog(path: Path, hists: Mapping[str, Any], point: PointInfo, cfg: RunConfig) -> None:
    comment = (
        f"loadgen {cfg.backend} model={point.model} concurrency={point.concurrency} "
        f"rate={rate_label(point.rate)} unit=us"
    )
    hdr.write_hlog(path, hists, point.start_epoch_s, point.end_epoch_s, comment=comment)


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a result JSON back (for notebooks and tests)."""
    return orjson.loads(Path(path).read_bytes())
