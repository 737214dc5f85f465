"""Prefix-cache hygiene and figures of one point: reset, salt, hit rates, the warm-cache warning.

A prefix cache changes what a benchmark measures: a prompt the server has seen before
skips most of its prefill. So every point says how much of its prompts the cache
served, from the client's side (each request's final usage,
``prompt_tokens_details.cached_tokens``) and from the server's (its hit and query
counters over the point's scrape bracket, :mod:`loadgen.telemetry`), and a workload
built to miss the cache (random prompts without a shared prefix) that hits it anyway is
flagged: a rerun with the same seed on a warm cache inflates throughput.

The figures are pure functions of the aggregates and the telemetry entry; only
:func:`reset` talks to the server (a control request, before the point's clock).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np

from loadgen import control
from loadgen.connection import Connection
from loadgen.metrics import Summary

# A cold workload that hits more than this is not measuring a cold cache.
COLD_HIT_LIMIT = 0.01
RESET_TIMEOUT_S = 10.0
# in the order tried: vLLM's (a dev-mode route), then SGLang's
RESET_ROUTES = ("/reset_prefix_cache", "/flush_cache")
# a trace replay's hit rate is also given per window of the trace's time: this many equal windows
# over the span of the rows sent (a fixed count reads the same for a 10-second slice and a day)
TRACE_WINDOWS = 10


def run_salt(option: str | None) -> str | None:
    """``--cache-salt``: ``auto`` draws a new salt for this run; any other value is used as given."""
    if option is None:
        return None
    return uuid.uuid4().hex if option.strip().lower() == "auto" else option


def reset(base_url: str, *, api_key: str | None = None, connection: Connection | None = None,
          timeout_s: float = RESET_TIMEOUT_S) -> dict[str, Any]:
    """Ask the server to empty its prefix cache; never raises.

    Tries vLLM's ``POST /reset_prefix_cache`` and, when that route does not exist, SGLang's
    ``POST /flush_cache``. The answer is the result's ``prefix_cache.reset`` entry: ``ok``,
    the route and status that decided, and a one-line ``message`` when it did not work
    (vLLM serves the route only with ``VLLM_SERVER_DEV_MODE=1``, and answers
    ``{"success": false}`` while blocks are still held). A server that does not
    answer within ``timeout_s`` is reported as not reset; the point runs regardless.
    """
    kwargs: dict[str, Any] = {"api_key": api_key, "body": {}, "timeout_s": timeout_s, "read_limit": 4096}
    if connection is not None:
        kwargs["connection"] = connection
    root = base_url.rstrip("/")
    last: dict[str, Any] = {}
    for path in RESET_ROUTES:
        try:
            resp = control.request(root + path, **kwargs)
        except control.ControlError as exc:
            return {"ok": False, "route": path, "status": None,
                    "message": f"prefix cache not reset: {exc}"}
        if resp.status == 200:
            if _said_no(resp.body):  # vLLM answers 200 {"success": false} while blocks are held
                return {"ok": False, "route": path, "status": 200,
                        "message": f"prefix cache not reset: POST {path} answered success=false (requests still "
                                   "running or KV transfers in flight)"}
            return {"ok": True, "route": path, "status": 200, "message": None}
        detail = resp.body[:160].decode("utf-8", "replace").strip().replace("\n", " ")
        last = {"ok": False, "route": path, "status": resp.status,
                "message": f"prefix cache not reset: POST {path} answered HTTP {resp.status}"
                           + (f" ({detail})" if detail else "")}
        if resp.status not in (404, 405):
            return last  # the route exists and refused (SGLang: requests still running)
    last["message"] = ("prefix cache not reset: the server has neither POST /reset_prefix_cache nor "
                       "/flush_cache (vLLM serves it only with VLLM_SERVER_DEV_MODE=1)")
    return last


def _said_no(body: bytes) -> bool:
    try:
        answer = json.loads(body or b"null")
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("success") is False


def client_figures(summary: Summary) -> dict[str, Any]:
    """The client's side: cached over prompt tokens of the successful requests that reported
    cached tokens; with none reporting, the hit rate is ``None`` (not reported), never 0."""
    n = summary.cache_reported
    return {
        "requests_reported": n,
        "cached_tokens": summary.cached_tokens if n else None,
        "prompt_tokens": summary.cache_prompt_tokens if n else None,
        "hit_rate": summary.cached_tokens / summary.cache_prompt_tokens
        if n and summary.cache_prompt_tokens else None,
    }


def server_figures(server_metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The server's side, from the counters' deltas over the point's scrape bracket
    (warm-up requests included), or ``None`` when the server exposes no prefix-cache metric."""
    summ = (server_metrics or {}).get("summary") or {}
    if "prefix_hit_rate" not in summ and "prefix_cache_queries" not in summ:
        return None
    return {"hits": summ.get("prefix_cache_hits"), "queries": summ.get("prefix_cache_queries"),
            "hit_rate": summ.get("prefix_hit_rate")}


def cold_workload(dataset: str, prefix_len: int) -> bool:
    """Random prompts without a shared prefix are built to miss the cache."""
    return dataset == "random" and not prefix_len


def warm_cache_warning(cold: bool, client_rate: float | None, server_rate: float | None) -> str | None:
    """The comparability warning, or ``None``. A random set's ``--warmup`` requests have prompts of
    their own (``prompt_set.build_prompts``), so a hit here came from outside the point."""
    rates = [r for r in (client_rate, server_rate) if r is not None]
    if not cold or not rates or max(rates) <= COLD_HIT_LIMIT:
        return None
    return (f"the prefix cache served {max(rates):.1%} of the prompt tokens of a workload built to miss it "
            "(random prompts): a warm cache from an earlier run (same --seed?) inflates throughput; "
            "use --reset-prefix-cache, --cache-salt auto or another --seed")


def section(summary: Summary, server_metrics: dict[str, Any] | None, *, dataset: str, prefix_len: int,
            reset_outcome: dict[str, Any] | None, salt: str | None, salt_mode: str | None = None,
            windows: dict[str, Any] | None = None, turns: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The result's ``prefix_cache`` entry (``windows``: a trace replay's :func:`by_window`;
    ``turns``: a sessions run's :func:`by_turn`)."""
    client = client_figures(summary)
    server = server_figures(server_metrics)
    cold = cold_workload(dataset, prefix_len)
    return {
        "client": client,
        "server": server,
        "cold_workload": cold,
        "warning": warm_cache_warning(cold, client["hit_rate"], server["hit_rate"] if server else None),
        "reset": reset_outcome,
        "cache_salt": salt,
        "cache_salt_mode": salt_mode if salt else None,
        "by_window": windows,
        "by_turn": turns,
    }


def _token_sums(rows: np.ndarray) -> dict[str, Any]:
    """Hit-rate figures of store rows (successful, measured): over those that reported cached tokens
    (``-1`` = not reported), prompt tokens being the server's count where it gave one."""
    told = rows[rows["cached_tokens"] >= 0]
    prompt = np.where(told["server_prompt_tokens"] >= 0, told["server_prompt_tokens"], told["input_len"])
    cached, total = int(told["cached_tokens"].sum()), int(prompt.sum())
    return {"requests": int(rows.size), "requests_reported": int(told.size),
            "cached_tokens": cached if told.size else None, "prompt_tokens": total if told.size else None,
            "hit_rate": cached / total if told.size and total else None}


def by_window(rows: np.ndarray, sent_rows: np.ndarray, sent_times_s: np.ndarray,
              windows: int = TRACE_WINDOWS) -> dict[str, Any]:
    """A trace replay's client-side hit rate per window of the trace's own time.

    ``rows`` are the point's per-request store rows (their ``prompt_id`` is the trace row);
    ``sent_rows`` (ascending) and ``sent_times_s`` say when in the trace each sent row came.
    The windows split ``[first, last]`` of those times into ``windows`` equal parts (one
    window when all came at once); a window's figures are those of the point's
    (:func:`client_figures`: successful, measured requests, cached over prompt tokens of
    those that reported), so a window where nothing reported has ``hit_rate`` null.
    """
    t0 = float(sent_times_s[0]) if sent_times_s.size else 0.0
    span = float(sent_times_s[-1]) - t0 if sent_times_s.size else 0.0
    n = windows if span > 0 else 1
    width = span / n if span > 0 else 0.0
    kept = rows[rows["ok"] & ~rows["warmup"]]
    at = np.searchsorted(sent_rows, kept["prompt_id"]).clip(0, max(sent_rows.size - 1, 0))
    sent = sent_rows[at] == kept["prompt_id"] if sent_rows.size else np.zeros(kept.size, bool)
    kept, at = kept[sent], at[sent]
    index = (np.minimum(((sent_times_s[at] - t0) / width).astype(np.int64), n - 1) if width
             else np.zeros(at.size, np.int64))
    return {
        "axis": "trace time (s from the trace's first row)",
        "window_s": width if span > 0 else None,
        "windows": [{"start_s": t0 + k * width, "end_s": t0 + (k + 1) * width if span > 0 else t0,
                     **_token_sums(kept[index == k])} for k in range(n)],
    }


def by_turn(rows: np.ndarray) -> list[dict[str, Any]]:
    """A sessions run's client-side hit rate per turn index (0: the first turn): the history a
    turn resends is what a prefix cache is there for, so the rate should climb with the turn."""
    kept = rows[rows["ok"] & ~rows["warmup"] & (rows["turn"] >= 0)]
    return [{"turn": int(t), **_token_sums(kept[kept["turn"] == t])} for t in np.unique(kept["turn"])]
