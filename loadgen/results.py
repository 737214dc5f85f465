"""Result files of one load point: the result JSON, per-request JSONL, the HDR interval log.

The result JSON carries every key of vLLM 0.8.x ``benchmark_serving.py --save-result``
(including its misspelt ``"request_goodput:"``), SGLang ``bench_serving``'s names for
the same figures, and loadgen's own additions. The schema is documented in
``docs/loadgen.md``; ``RESULT_SCHEMA`` versions it.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from loadgen import hdr_record
from loadgen.aggregate import InlineRequest
from loadgen.config import (
    DEFAULT_RESULT_FILENAME,
    SESSIONS_RESULT_FILENAME,
    TRACE_RESULT_FILENAME,
    RunConfig,
    rate_label,
    safe_filename_part,
)
from loadgen.config_file import to_form
from loadgen.fileio import atomic_write
from loadgen.metrics import (
    EXTRA_METRICS,
    METRICS,
    REASONING_METRICS,
    SATURATION_LAG_P99_MS,
    Stats,
    Summary,
    percentile_key,
)

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
    repeat: int = 1  # which of --repeat K runs of this point


def render_filename(template: str, cfg: RunConfig, concurrency: int | None, rate: float, model: str, date: str,
                    repeat: int = 1) -> str:
    """The result file name of one point; every field is made file-name safe.

    With ``--repeat K`` (K > 1) and no ``{repeat}`` field in the template, ``-repN``
    is added before ``.json`` so the K files of a point never overwrite each other.
    The default template names a trace replay by its file and speed-up, and a session
    run by its turns and per-turn lengths, instead of ``--input-len``'s default.
    """
    w = cfg.workload
    if template == DEFAULT_RESULT_FILENAME and (w.is_trace or w.dataset == "sessions"):
        template = TRACE_RESULT_FILENAME if w.is_trace else SESSIONS_RESULT_FILENAME
    asked_in, asked_out = w.asked_lengths()
    fields = {
        "backend": cfg.target.backend,
        "model": model,
        "concurrency": "inf" if concurrency is None else concurrency,
        "rate": rate_label(rate),
        "input_len": "trace" if asked_in is None else asked_in,
        "output_len": "trace" if asked_out is None else asked_out,
        "trace": Path(w.dataset_path).stem if w.is_trace and w.dataset_path else w.dataset,
        "speedup": f"{w.trace_speedup:g}",
        "turns": w.session_turns,
        "num_prompts": cfg.prompts_needed(),
        "dataset": cfg.workload.dataset,
        "label": cfg.output.label or cfg.target.backend,
        "date": date,
        "seed": cfg.seed,
        "arrival": cfg.schedule.arrival,
        "repeat": repeat,
    }
    name = template.format(**{k: safe_filename_part(v) for k, v in fields.items()})
    if cfg.schedule.repeat > 1 and "{repeat" not in template:
        name = f"{name.removesuffix('.json')}-rep{repeat}"
    if not name.endswith(".json"):
        name += ".json"
    return name


def sibling(result_path: Path, suffix: str) -> Path:
    """``x.json`` → ``x.requests.jsonl`` / ``x.hlog``: the other forms sit next to the result."""
    stem = result_path.name[: -len(".json")] if result_path.name.endswith(".json") else result_path.name
    return result_path.with_name(stem + suffix)


def _stat_keys(name: str, st: Stats) -> dict[str, float | None]:
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
    """Versions of everything that shapes the numbers (``importlib.metadata`` is imported
    here, after the run: it costs more start-up than anything else in this module)."""
    from importlib import metadata as importlib_metadata

    out: dict[str, str | None] = {"python": ".".join(map(str, sys.version_info[:3]))}
    for dist in ("loadgen", "aiohttp", "uvloop", "orjson", "hdrhistogram", "transformers", "tokenizers", "numpy"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = None
    out["server"] = server_version
    return out


def build_result(
    cfg: RunConfig,
    point: PointInfo,
    summary: Summary,
    inline: Sequence[InlineRequest] | None,
    hists: Mapping[str, Any],
    *,
    server_version: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The result JSON of one point as a dict (plain JSON types only).

    ``inline`` holds the per-request rows of a small point (vLLM's ``input_lens``,
    ``output_lens``, ``ttfts``, ``itls``, ``errors``); for a large one it is ``None``
    and those keys are absent: the per-request store has the rows (``per_request``).
    """
    pcts = cfg.output.percentiles
    rate_json: float | str = "inf" if math.isinf(point.rate) else point.rate
    res: dict[str, Any] = {
        # vLLM 0.8.x benchmark_serving.py
        "date": point.date,
        "backend": cfg.target.backend,
        "model_id": point.model,
        "tokenizer_id": point.tokenizer_id,
        "num_prompts": summary.num_requests,
        "request_rate": rate_json,
        "burstiness": cfg.schedule.burstiness,
        "max_concurrency": point.concurrency,
        "duration": summary.duration_s,
        "completed": summary.completed,
        "total_input_tokens": summary.total_input_tokens,
        "total_output_tokens": summary.total_output_tokens,
        "request_throughput": summary.request_throughput,
        "request_goodput:": summary.request_goodput,
        "output_throughput": summary.output_throughput,
        "total_token_throughput": summary.total_token_throughput,
    }
    if inline is not None:
        res.update({
            "input_lens": [r.input_len for r in inline],
            "output_lens": [r.output_len for r in inline],
            "ttfts": [r.ttft_s for r in inline],
            "itls": [r.itls_s for r in inline],
            "errors": [r.error for r in inline],
        })
        if cfg.output.save_text:
            res["generated_texts"] = [r.text for r in inline]
    for m in METRICS:
        res.update(_stat_keys(m, summary.stats[m]))
    # vLLM-compatible extras and SGLang bench_serving names
    e2el = summary.stats["e2el"]
    per_row = cfg.workload.is_trace or cfg.workload.dataset == "sessions"
    res.update(
        {
            "input_throughput": summary.input_throughput,
            "request_goodput": summary.request_goodput,
            "dataset_name": cfg.workload.dataset,
            # vLLM's keys for the asked lengths of every request: null for a trace (the rows') or
            # sessions (per turn, the prompt growing with the conversation; `sessions`, run_config)
            "random_input_len": None if per_row else cfg.workload.input_len,
            "random_output_len": None if per_row else cfg.workload.output_len,
            "random_range_ratio": None if per_row else cfg.workload.range_ratio,
            "total_throughput": summary.total_token_throughput,
            "mean_e2e_latency_ms": e2el.mean,
            "median_e2e_latency_ms": e2el.median,
            "std_e2e_latency_ms": e2el.std,
            "concurrency": summary.mean_concurrency,
        }
    )
    for p, value in e2el.percentiles.items():
        res[f"p{percentile_key(p)}_e2e_latency_ms"] = value
    # loadgen's own
    for m in EXTRA_METRICS + REASONING_METRICS:
        res.update(_stat_keys(m, summary.stats[m]))
    res.update(
        {
            "schema": RESULT_SCHEMA,
            "label": cfg.output.label,
            "partial": point.partial,
            "ignore_eos": cfg.effective_ignore_eos,
            "percentiles": list(pcts),
            "arrival": cfg.schedule.arrival,
            "seed": cfg.seed,
            "warmup_requests": point.warmup_requests,
            "failed": summary.failed,
            "errors_by_kind": summary.errors_by_kind,
            "retries": summary.retries,
            "good_completed": summary.good_completed,
            "goodput_slos_ms": dict(cfg.output.goodput_slos_ms) or None,
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
            "invisible_output_requests": summary.invisible_outputs,
            "invisible_output_tokens": summary.invisible_tokens,
            "reasoning_requests": summary.reasoning_requests,
            "no_answer": summary.no_answer,
            "total_reasoning_tokens": summary.total_reasoning_tokens,
            "total_answer_tokens": summary.total_answer_tokens,
            "reasoning_tokens_source": summary.reasoning_tokens_source,
            "unrecognised_output_fields": summary.unrecognised_fields,
            "itl_samples": summary.stats["itl"].n,
            "percentiles_from": "hdr_histograms",
            "start_time": point.start_epoch_s,
            "end_time": point.end_epoch_s,
            "metadata": dict(cfg.output.metadata),
            "config": cfg.to_dict(),
            "run_config": to_form(cfg),
            "versions": versions(server_version),
            "hdr_histograms": {
                "unit": "us",
                "significant_digits": hdr_record.SIGNIFICANT_DIGITS,
                **{tag: hdr_record.encode(h) for tag, h in hists.items()},
            },
        }
    )
    if extra:
        res.update(extra)
    # vLLM writes --metadata KEY=VALUE at the top level; do the same where it clashes with nothing.
    for key, text in cfg.output.metadata.items():
        res.setdefault(key, text)
    return res


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


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    atomic_write(path, orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def write_hlog(path: Path, hists: Mapping[str, Any], point: PointInfo, cfg: RunConfig) -> None:
    comment = (
        f"loadgen {cfg.target.backend} model={point.model} concurrency={point.concurrency} "
        f"rate={rate_label(point.rate)} unit=us"
    )
    hdr_record.write_hlog(path, hists, point.start_epoch_s, point.end_epoch_s, comment=comment)


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a result JSON back (for notebooks and tests)."""
    return orjson.loads(Path(path).read_bytes())
