"""Comparability checks: reasons two sets of runs cannot be compared figure for figure.

The field report compared engines whose runs differed in EOS handling, engine
settings and method, and drew conclusions its data did not support. Each check
here names such a difference, says which figures it distorts and how to remove
it, so that a comparison can print them first and qualify its conclusions.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.issues import Issue
from analysis.prefix_cache import check_cache
from analysis.telemetry import check_server

LENGTH_TOLERANCE = 0.02  # measured mean within 2 % of the asked length counts as on target

_CLIENT_NAMES = {"loadgen": "loadgen", "vllm": "vLLM's benchmark_serving", "sglang": "SGLang's bench_serving"}

_SETTING_NAMES = {
    "engine_eager": "eager mode (no CUDA graphs)",
    "engine_context_length": "context length",
    "engine_mem_fraction": "memory fraction",
    "engine_tensor_parallel": "tensor parallel size",
    "engine_max_num_seqs": "max running requests",
    "engine_chunked_prefill": "chunked prefill",
}


def _labels(runs: pd.DataFrame) -> list[str]:
    return [str(x) for x in pd.unique(runs["label"])]


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _points(values: list[int]) -> str:
    vals = sorted({int(v) for v in values})
    return ", ".join(str(v) for v in vals[:8]) + (f" … ({len(vals)} points)" if len(vals) > 8 else "")


def _per_label_values(runs: pd.DataFrame, column: str) -> dict[str, set]:
    out: dict[str, set] = {}
    if column not in runs.columns:
        return out
    for label, group in runs.groupby("label", sort=True):
        vals = {v for v in group[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        out[str(label)] = vals
    return out


def check_ignore_eos(runs: pd.DataFrame) -> list[Issue]:
    per = {}
    for label, group in runs.groupby("label", sort=True):
        values = {(row.ignore_eos, row.ignore_eos_source) for row in group.itertuples()}
        per[str(label)] = values
    flags = {label: {v for v, _ in vals} for label, vals in per.items()}
    distinct = set().union(*flags.values()) if flags else set()
    if len(distinct) <= 1 and None not in distinct:
        return []
    parts = []
    for label, vals in per.items():
        desc = "/".join(sorted(f"{'on' if v else 'off' if v is not None else 'unknown'} ({src})" for v, src in vals))
        parts.append(f"{label}: ignore_eos {desc}")
    return [Issue(
        "ignore_eos", "warning",
        "runs differ in EOS handling — " + "; ".join(parts)
        + ". Runs that stop at EOS generate fewer tokens, so throughput, TPOT and E2EL are not comparable; "
        "rerun every engine with ignore_eos on (loadgen does by default).",
        tuple(per),
    )]


def check_lengths(runs: pd.DataFrame) -> list[Issue]:
    issues = []
    for kind, asked, measured in (("output_len", "output_len", "mean_output_len"), ("input_len", "input_len", "mean_input_len")):
        if asked not in runs.columns or measured not in runs.columns:
            continue
        for label, group in runs.groupby("label", sort=True):
            off = []
            for row in group.itertuples():
                a, m = getattr(row, asked), getattr(row, measured)
                if a is None or m is None or pd.isna(a) or pd.isna(m) or not a:
                    continue
                if abs(m - a) / a > LENGTH_TOLERANCE:
                    off.append((row.concurrency, a, m, getattr(row, "ignore_eos", None)))
            if not off:
                continue
            worst = max(off, key=lambda t: abs(t[2] - t[1]) / t[1])
            mean_ratio = sum(m / a for _, a, m, _ in off) / len(off)
            what = "output" if kind == "output_len" else "input"
            issues.append(Issue(
                kind, "warning",
                f"{label}: measured {what} length is off the asked one at {len(off)} of {len(group)} points "
                f"(on average {mean_ratio:.0%} of asked; worst: {worst[2]:.1f} of {_fmt(worst[1])} at "
                f"concurrency {_fmt(worst[0])}). "
                + (_short_output_advice(off) if kind == "output_len"
                   else "Prompts were not the asked length: check the tokenizer and template."),
                (label,),
            ))
    return issues


def _short_output_advice(off: list[tuple]) -> str:
    """Why completed requests came back short, by what the run asked for (failed requests
    are not counted in the measured length, so they are never the reason)."""
    if all(eos is True for *_, eos in off):
        return ("Outputs stopped early although ignore_eos was on: a server length limit (max_model_len, "
                "max_tokens cap) or a server that ignores ignore_eos.")
    return "Outputs stopped early (EOS or a length limit): rerun with ignore_eos on."


def check_dataset(runs: pd.DataFrame) -> list[Issue]:
    per = _per_label_values(runs, "dataset")
    distinct = set().union(*per.values()) if per else set()
    if len(distinct) <= 1:
        return []
    desc = "; ".join(f"{label}: {', '.join(sorted(map(str, v))) or 'unknown'}" for label, v in per.items())
    return [Issue("dataset", "warning", f"runs used different datasets — {desc}; compare runs of one workload.",
                  tuple(per))]


def check_burst(runs: pd.DataFrame) -> list[Issue]:
    issues = []
    for label, group in runs.groupby("label", sort=True):
        burst = group[group["burst"].astype(bool)]
        if burst.empty:
            continue
        issues.append(Issue(
            "burst", "warning",
            f"{label}: {len(burst)} of {len(group)} points are one burst (num_prompts ≤ concurrency, no "
            f"steady state) at concurrency {_points(list(burst['concurrency'].dropna()))}. TTFT then measures "
            "the burst's queue; use at least 4× the concurrency in prompts with a warm-up.",
            (label,),
        ))
    return issues


def check_engine_settings(runs: pd.DataFrame) -> list[Issue]:
    issues = []
    labels = _labels(runs)
    for column, name in _SETTING_NAMES.items():
        per = _per_label_values(runs, column)
        if not per:
            continue
        known = {label: vals for label, vals in per.items() if vals}
        distinct = set().union(*known.values()) if known else set()
        if len(known) >= 2 and len(distinct) > 1:
            desc = "; ".join(f"{label}: {', '.join(_fmt(v) for v in sorted(vals, key=str))}" for label, vals in known.items())
            issues.append(Issue("engine_settings", "warning",
                                f"engine settings differ in {name} — {desc}.", tuple(known)))
        elif column == "engine_eager" and True in distinct and len(labels) >= 1:
            eager = [label for label, vals in known.items() if True in vals]
            issues.append(Issue("engine_settings", "note",
                                f"{', '.join(eager)} ran in eager mode (no CUDA graphs): its TPOT is far above "
                                "what the engine reaches with graphs.", tuple(eager)))
    return issues


def check_client(runs: pd.DataFrame) -> list[Issue]:
    issues = []
    for label, group in runs.groupby("label", sort=True):
        sat = group[group["client_saturated"].astype(bool)] if "client_saturated" in group else group.iloc[0:0]
        if not sat.empty:
            issues.append(Issue(
                "client_saturated", "warning",
                f"{label}: the client itself was saturated at concurrency {_points(list(sat['concurrency'].dropna()))}; "
                "its latencies include client delay — use fewer streams per client or more client cores.",
                (label,),
            ))
        behind = group[group["trace_behind"].fillna(False).astype(bool)] if "trace_behind" in group \
            else group.iloc[0:0]
        if not behind.empty:
            issues.append(Issue(
                "replay_behind", "warning",
                f"{label}: the trace replay fell behind its schedule (release lateness p99 "
                f"{float(pd.to_numeric(behind['trace_lag_p99_ms'], errors='coerce').max()):.1f} ms); the server "
                "saw a smoother load than the trace — replay slower (--trace-speedup) or with more client cores.",
                (label,),
            ))
        if "prompt_token_mismatches" in group:
            mism = pd.to_numeric(group["prompt_token_mismatches"], errors="coerce").fillna(0)
            if (mism > 0).any():
                issues.append(Issue(
                    "prompt_mismatch", "warning",
                    f"{label}: the server counted a different prompt length than the workload built for "
                    f"{int(mism.sum())} requests; its tokenizer or chat template differs from the client's.",
                    (label,),
                ))
        part = group[group["partial"].astype(bool)] if "partial" in group else group.iloc[0:0]
        if not part.empty:
            issues.append(Issue(
                "partial", "warning",
                f"{label}: {len(part)} runs stopped early (partial) at concurrency "
                f"{_points(list(part['concurrency'].dropna()))}; rerun them (make bench resumes).",
                (label,),
            ))
        if "error_rate" in group:
            err = group[group["error_rate"].fillna(0) > 0]
            if not err.empty:
                issues.append(Issue(
                    "errors", "note",
                    f"{label}: requests failed at {len(err)} points (worst error rate "
                    f"{err['error_rate'].max():.1%}); failed requests are excluded from latencies.",
                    (label,),
                ))
    return issues


def check_clients(runs: pd.DataFrame) -> list[Issue]:
    """Different benchmark programs build prompts and count tokens their own way: not one workload."""
    per = _per_label_values(runs, "format")
    distinct = set().union(*per.values()) if per else set()
    if len(distinct) <= 1:
        return []
    desc = "; ".join(f"{label}: {', '.join(_CLIENT_NAMES.get(v, v) for v in sorted(vals))}" for label, vals in per.items())
    return [Issue("client", "warning",
                  f"runs were measured by different benchmark clients — {desc}. Each builds its own prompts and "
                  "counts tokens its own way; measure every engine with one client (loadgen).", tuple(per))]


def check_models(runs: pd.DataFrame) -> list[Issue]:
    per = _per_label_values(runs, "tokenizer")
    per = {k: {str(x).rstrip("/").rsplit("/", 1)[-1] for x in v} for k, v in per.items() if v}
    distinct = set().union(*per.values()) if per else set()
    if len(per) >= 2 and len(distinct) > 1:
        desc = "; ".join(f"{label}: {', '.join(sorted(v))}" for label, v in per.items())
        return [Issue("model", "note", f"runs name different tokenizers — {desc}.", tuple(per))]
    return []


def check_reasoning(runs: pd.DataFrame) -> list[Issue]:
    """Sets where one reasoned and another did not (a thinking default changed: TTFT and
    TPOT then measure different things), and points whose requests never answered."""
    if "reasoning_requests" not in runs.columns:
        return []
    issues = []
    reasoned = {label: bool((pd.to_numeric(g["reasoning_requests"], errors="coerce") > 0).any())
                for label, g in runs.groupby("label", sort=True)}
    if len(set(reasoned.values())) > 1:
        yes = ", ".join(str(k) for k, v in reasoned.items() if v)
        no = ", ".join(str(k) for k, v in reasoned.items() if not v)
        issues.append(Issue(
            "reasoning", "warning",
            f"{yes} reasoned before answering and {no} did not: their TTFT, TPOT and output include thinking "
            "in one and not the other; compare TTFA and answer TPOT, or run both with the same "
            "--chat-template-kwargs (e.g. '{\"enable_thinking\": false}').",
            tuple(str(k) for k in reasoned),
        ))
    if "no_answer" in runs.columns:
        hit = runs[pd.to_numeric(runs["no_answer"], errors="coerce") > 0]
        for label, g in hit.groupby("label", sort=True):
            issues.append(Issue(
                "no_answer", "note",
                f"{label}: {int(g['no_answer'].sum())} request(s) spent their whole max_tokens reasoning and never "
                f"answered (concurrency {_points(list(g['concurrency'].dropna()))}); TTFA and answer TPOT leave them "
                "out.", (str(label),),
            ))
    return issues


def comparability(runs: pd.DataFrame) -> list[Issue]:
    """Every comparability issue across ``runs`` (warnings first), for printing before a comparison."""
    if runs.empty:
        return []
    issues: list[Issue] = []
    if runs["label"].nunique() > 1:
        issues += check_ignore_eos(runs)
        issues += check_dataset(runs)
        issues += check_clients(runs)
        issues += check_models(runs)
    issues += check_lengths(runs)
    issues += check_burst(runs)
    issues += check_engine_settings(runs)
    issues += check_client(runs)
    issues += check_reasoning(runs)
    issues += check_server(runs)
    issues += check_cache(runs)
    return sorted(issues, key=lambda i: i.severity != "warning")
