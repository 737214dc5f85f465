"""Figures per run from the server's side: a timeline per point (client in flight beside the
server's running/waiting, KV usage, latencies) and TTFT against the cached share of the prompt.

Apart from :mod:`analysis.telemetry` and :mod:`analysis.prefix_cache` because drawing needs each
run's requests (:mod:`analysis.load`), which itself reads those modules' columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.load import LoadError, requests_of
from analysis.plots import PALETTE, _new, save, style
from analysis.prefix_cache import CLIENT_COLUMN, PLOT_SAMPLE, cached_fraction
from analysis.telemetry import client_in_flight


def _requests_of(path: Path, record: Mapping[str, Any]) -> pd.DataFrame | None:
    try:
        frame = requests_of(path, record)
    except LoadError:  # a damaged store: named by the loader; the timeline goes without the client's view
        return None
    if frame.empty or "sent_ms" not in frame.columns:
        return None
    if "warmup" in frame.columns:
        frame = frame[~frame["warmup"].fillna(False).astype(bool)]
    return frame


def timeline_figure(record: Mapping[str, Any], requests: pd.DataFrame | None, title: str) -> Figure | None:
    """Three panels over time: in flight vs server running/waiting; KV usage and preemptions;
    client latencies per request vs the server's per interval. None without a timeline."""
    tl = (record.get("server_metrics") or {}).get("timeline") or {}
    if not tl.get("t_s"):
        return None
    t = np.asarray(tl["t_s"], dtype=float)

    def col(key: str) -> np.ndarray | None:
        vals = tl.get(key)
        return None if vals is None else np.asarray([np.nan if v is None else v for v in vals], dtype=float)

    fig = Figure(figsize=(8.0, 7.0))
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    fig.suptitle(title)
    if requests is not None and "sent_ms" in requests.columns:
        grid = np.linspace(min(t.min(), 0.0), t.max(), 400)
        ax1.plot(grid, client_in_flight(requests, grid), color=PALETTE[0], label="client in flight")
    elif col("client_in_flight") is not None:
        ax1.plot(t, col("client_in_flight"), color=PALETTE[0], label="client in flight")
    for key, colour in (("running", PALETTE[1]), ("waiting", PALETTE[2])):
        if col(key) is not None:
            ax1.plot(t, col(key), color=colour, marker=".", label=f"server {key}")
    ax1.set_ylabel("requests")
    ax1.legend(fontsize=8)
    kv_usage = col("kv_usage")
    if kv_usage is not None:
        ax2.plot(t, kv_usage * 100.0, color=PALETTE[3], marker=".", label="KV usage (%)")
        ax2.set_ylim(0, 105)
    ax2.set_ylabel("KV usage (%)")
    if col("preemptions") is not None:
        twin = ax2.twinx()
        twin.plot(t, col("preemptions"), color=PALETTE[4], linestyle="--", label="preemptions (cumulative)")
        twin.set_ylabel("preemptions")
        twin.grid(False)
        twin.legend(fontsize=8, loc="lower right")
    ax2.legend(fontsize=8, loc="upper left")
    if requests is not None and {"sent_ms", "ttft_ms"} <= set(requests.columns):
        ax3.scatter(pd.to_numeric(requests["sent_ms"], errors="coerce") / 1000.0,
                    pd.to_numeric(requests["ttft_ms"], errors="coerce"), s=4, color=PALETTE[0],
                    alpha=0.5, label="client TTFT (at send)")
    if col("server_ttft_ms") is not None:
        ax3.plot(t, col("server_ttft_ms"), color=PALETTE[1], marker=".", label="server TTFT (interval mean)")
    if col("server_itl_ms") is not None:
        ax3.plot(t, col("server_itl_ms"), color=PALETTE[2], marker=".", label="server ITL (interval mean)")
    ax3.set_ylabel("ms")
    ax3.set_xlabel("seconds from the start of the point")
    ax3.legend(fontsize=8)
    return fig


def timeline_plots(runs: pd.DataFrame, plot_dir: Path) -> list[Path]:
    """One timeline figure per run that recorded server metrics; returns the files written."""
    if "has_server_timeline" not in runs.columns:
        return []
    written: list[Path] = []
    for row in runs[runs["has_server_timeline"].fillna(False).astype(bool)].itertuples():
        path = Path(str(row.path))
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        conc = "unl." if pd.isna(row.concurrency) else int(row.concurrency)
        title = f"{row.label}: concurrency {conc}, {_len(row.input_len)} in / {_len(row.output_len)} out"
        with style():
            fig = timeline_figure(record, _requests_of(path, record), title)
            if fig is not None:
                stem = f"timeline_{_safe(str(row.label))}_c{conc}_{_len(row.input_len)}x{_len(row.output_len)}"
                written += save(fig, plot_dir, stem)
    return written


def _len(value: Any) -> str:
    return "?" if value is None or pd.isna(value) else str(int(value))


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def ttft_plot(runs: pd.DataFrame, plot_dir: Path) -> list[Path]:
    """TTFT against the cached fraction of the prompt, every run that reported cached tokens."""
    if CLIENT_COLUMN not in runs.columns:
        return []
    reported = runs[runs[CLIENT_COLUMN].notna()]
    if reported.empty:
        return []
    with style():
        fig, ax = _new("TTFT vs cached fraction of the prompt")
        drawn = 0
        for i, row in enumerate(reported.itertuples()):
            path = Path(str(row.path))
            try:
                frame = requests_of(path, json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
            frame = frame[frame.get("ok", True).astype(bool)] if "ok" in frame.columns else frame
            frac = cached_fraction(frame)
            keep = frac.notna() & frame["ttft_ms"].notna()
            if not keep.any():
                continue
            sample = frame[keep].sample(min(int(keep.sum()), PLOT_SAMPLE), random_state=0)
            conc = "unl." if pd.isna(row.concurrency) else int(row.concurrency)
            ax.scatter(frac[sample.index] * 100, sample["ttft_ms"], s=6, alpha=0.5,
                       color=PALETTE[i % len(PALETTE)], label=f"{row.label} c={conc}")
            drawn += 1
        if not drawn:
            plt.close(fig)
            return []
        ax.set_xlabel("cached share of the prompt (%)")
        ax.set_ylabel("TTFT (ms)")
        ax.set_xlim(-2, 102)
        ax.set_ylim(bottom=0)
        ax.legend(markerscale=2)
    return save(fig, plot_dir, "ttft_vs_cached_fraction")
