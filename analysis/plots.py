"""Figures: throughput and latency against concurrency, latency against throughput, HDR curves.

Every figure has a transparent background, mid-tone colours and mid-grey text
and grid, so that it stays readable in a light or a dark notebook and in the
HTML report. Functions return matplotlib figures; :func:`save` writes PNG and SVG.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from analysis import hdr

PALETTE = ("#4C9BE8", "#E8744C", "#3FB07A", "#B36AE2", "#D4A82A", "#E05A8A", "#4CC3C9", "#9A9A9A")
INK = "#8A8A8A"  # readable on white and on near-black
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")

_RC: dict[str, Any] = {
    "figure.facecolor": "none",
    "axes.facecolor": "none",
    "savefig.facecolor": "none",
    "savefig.transparent": True,
    "text.color": INK,
    "axes.labelcolor": INK,
    "axes.edgecolor": INK,
    "axes.titlecolor": INK,
    "xtick.color": INK,
    "ytick.color": INK,
    "grid.color": INK,
    "grid.alpha": 0.35,
    "grid.linestyle": "-",
    "axes.grid": True,
    "axes.grid.which": "major",
    "legend.frameon": False,
    "legend.labelcolor": INK,
    "font.size": 10,
    "axes.titlesize": 11,
    "svg.fonttype": "none",
}


@contextmanager
def style() -> Iterator[None]:
    """The theme above, applied only inside the block (a notebook's own style is left alone).

    Creating the first figure activates the backend, and a notebook's inline
    backend switches interactive mode on then; that switch must survive the
    block, or later figures are never shown.
    """
    with plt.rc_context(cast("dict[Any, Any]", _RC)):  # matplotlib's stubs name every key
        yield
        interactive = matplotlib.is_interactive()
    matplotlib.interactive(interactive)


def _series(runs: pd.DataFrame) -> list[tuple[str, str, str, str, pd.DataFrame]]:
    """(name, colour, linestyle, marker, rows sorted by concurrency) per label and asked lengths."""
    runs = runs.dropna(subset=["concurrency"])
    labels = [str(x) for x in pd.unique(runs["label"])]
    pairs = sorted({(r.input_len, r.output_len) for r in runs.itertuples()}, key=lambda t: (str(t[0]), str(t[1])))
    many_pairs = len(pairs) > 1
    out = []
    groups = sorted(runs.groupby(["label", "input_len", "output_len"], sort=True, dropna=False),
                    key=lambda item: labels.index(str(item[0][0])))
    for (label, inp, outl), group in groups:
        li = labels.index(str(label))
        pi = pairs.index((inp, outl)) if (inp, outl) in pairs else 0
        name = f"{label} {_len(inp)}/{_len(outl)}" if many_pairs else str(label)
        group = group.groupby("concurrency", as_index=False).mean(numeric_only=True).sort_values("concurrency")
        out.append((name, PALETTE[li % len(PALETTE)], LINESTYLES[pi % len(LINESTYLES)], MARKERS[pi % len(MARKERS)], group))
    return out


def _len(value: float | None) -> str:
    return "?" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))


def _concurrency_axis(ax: plt.Axes, runs: pd.DataFrame) -> None:
    concs = sorted({int(c) for c in runs["concurrency"].dropna()})
    if concs and concs[-1] / max(concs[0], 1) >= 8:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(concs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v)}"))
    if len(concs) > 8:
        ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel("concurrency")


def _log_y(ax: plt.Axes) -> None:
    """Log scale with plain numbers (100, 1000) rather than powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _interval(ax: plt.Axes, g: pd.DataFrame, col: str, colour: str, x: str = "concurrency") -> None:
    """Error bars for ``col`` where the runs were repeated (``analysis.intervals``: 95 % bootstrap)."""
    low, high = f"{col}_ci_low", f"{col}_ci_high"
    if low not in g or not g[low].notna().any():
        return
    rows = g[g[low].notna()]
    y = rows[col]
    ax.errorbar(rows[x], y, yerr=[(y - rows[low]).clip(lower=0), (rows[high] - y).clip(lower=0)], fmt="none",
                ecolor=colour, elinewidth=1, capsize=3, alpha=0.8)


def _new(title: str) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    ax.set_title(title)
    return fig, ax


def throughput(runs: pd.DataFrame) -> Figure:
    """Output tokens per second against concurrency, one line per label (and lengths)."""
    with style():
        fig, ax = _new("Output throughput vs concurrency")
        for name, colour, ls, marker, g in _series(runs):
            ax.plot(g["concurrency"], g["output_throughput"], ls, marker=marker, color=colour, label=name)
            _interval(ax, g, "output_throughput", colour)
        _concurrency_axis(ax, runs)
        ax.set_ylabel("output tokens/s")
        ax.set_ylim(bottom=0)
        ax.legend()
    return fig


def latency(runs: pd.DataFrame, metric: str, percentiles: tuple[str, ...] = ("p50", "p99")) -> Figure:
    """``metric`` (ttft, tpot, itl, e2el) percentiles against concurrency; log scale when the range is wide."""
    with style():
        fig, ax = _new(f"{metric.upper()} vs concurrency ({', '.join(percentiles)})")
        values = []
        for name, colour, ls, _marker, g in _series(runs):
            for i, pct in enumerate(percentiles):
                col = f"{pct}_{metric}_ms"
                if col not in g or g[col].isna().all():
                    continue
                ax.plot(g["concurrency"], g[col], ls, marker=MARKERS[i % len(MARKERS)], color=colour,
                        alpha=1.0 if i == 0 else 0.65, label=f"{name} {pct}")
                _interval(ax, g, col, colour)
                values += [v for v in g[col] if v and v > 0 and not math.isnan(v)]
        if values and max(values) / min(values) > 20:
            _log_y(ax)
        _concurrency_axis(ax, runs)
        ax.set_ylabel(f"{metric.upper()} (ms)")
        if values:
            ax.legend(fontsize=8, ncol=2)
    return fig


def latency_throughput(runs: pd.DataFrame, metric: str = "p99_ttft_ms") -> Figure:
    """The latency-throughput curve: ``metric`` against output tokens/s, points marked with concurrency."""
    with style():
        readable = _readable(metric)
        fig, ax = _new(f"{readable} vs output throughput")
        values = []
        for name, colour, ls, marker, g in _series(runs):
            if metric not in g:
                continue
            ax.plot(g["output_throughput"], g[metric], ls, marker=marker, color=colour, label=name)
            for row in g.itertuples():
                y = getattr(row, metric)
                if y and not math.isnan(y):
                    ax.annotate(f"{int(row.concurrency)}", (row.output_throughput, y), textcoords="offset points",
                                xytext=(4, 4), fontsize=7, color=colour)
                    values.append(y)
        if values and min(values) > 0 and max(values) / min(values) > 20:
            _log_y(ax)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(f"{readable} (ms)")
        ax.legend()
    return fig


def reasoning_answer(runs: pd.DataFrame) -> Figure:
    """A reasoning model's time per request, split: mean reasoning time (first token to first
    answer token) and mean answer time (first answer token to the last), against concurrency."""
    with style():
        fig, ax = _new("Reasoning vs answer time per request (mean)")
        for name, colour, _ls, marker, g in _series(runs):
            for col, ls, what in (("mean_reasoning_time_ms", "-", "reasoning"), ("mean_answer_time_ms", "--", "answer")):
                if col in g and g[col].notna().any():
                    ax.plot(g["concurrency"], g[col], ls, marker=marker, color=colour, label=f"{name} {what}")
        _concurrency_axis(ax, runs)
        ax.set_ylabel("ms per request")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, ncol=2)
    return fig


def ttft_by_turn(runs: pd.DataFrame) -> Figure:
    """Session runs: p50 and p99 TTFT against the turn index, one line per run — how
    latency grows as conversations do (``loadgen --dataset-name sessions``)."""
    with style():
        fig, ax = _new("TTFT by turn (sessions)")
        rows = runs[runs["sessions_by_turn"].map(lambda v: isinstance(v, list) and bool(v))]
        for i, r in enumerate(rows.itertuples()):
            turns = pd.DataFrame(r.sessions_by_turn)
            conc = "unl." if r.concurrency is None or math.isnan(r.concurrency) else int(r.concurrency)
            name = f"{r.label} c={conc}"
            colour = PALETTE[i % len(PALETTE)]
            for j, pct in enumerate(("p50", "p99")):
                ax.plot(turns["turn"], turns[f"{pct}_ttft_ms"], LINESTYLES[j % len(LINESTYLES)],
                        marker=MARKERS[j % len(MARKERS)], color=colour, label=f"{name} {pct}")
        ax.set_xlabel("turn index")
        ax.set_ylabel("TTFT (ms)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, ncol=2)
    return fig


def _readable(column: str) -> str:
    """``p99_ttft_ms`` → ``p99 TTFT``."""
    stat, _, rest = column.removesuffix("_ms").partition("_")
    return f"{stat} {rest.upper()}"


def _percent_label(x: float) -> str:
    p = 100.0 * (1.0 - 1.0 / x)
    return f"{p:.6g}%"


def hdr_curves(hists: pd.DataFrame, metric: str, title: str | None = None) -> Figure:
    """Classic HDR percentile distribution: latency against 1/(1-p) on a log axis, one curve per row.

    ``hists`` is a frame from :func:`analysis.histograms` or :func:`analysis.merge_histograms`;
    rows of other metrics are ignored. Curves are coloured by label and styled by concurrency.
    """
    rows = hists[hists["metric"] == metric]
    if "label" in rows and "concurrency" in rows:
        order = {label: i for i, label in enumerate(pd.unique(rows["label"]))}
        rows = rows.assign(_order=rows["label"].map(order)).sort_values(["_order", "concurrency"], kind="stable")
    with style():
        fig, ax = _new(title or f"{metric.upper()} percentile distribution")
        labels = [str(x) for x in pd.unique(rows["label"])] if "label" in rows else []
        concs = sorted({c for c in rows.get("concurrency", pd.Series(dtype=float)).dropna()})
        xmax = 10.0
        lows, highs = [], []
        for row in rows.itertuples():
            curve = hdr.percentile_curve(row.histogram, row.ms_per_unit)
            if curve.empty:
                continue
            label = str(getattr(row, "label", "run"))
            colour = PALETTE[labels.index(label) % len(PALETTE)] if label in labels else PALETTE[0]
            conc = getattr(row, "concurrency", None)
            ls = LINESTYLES[concs.index(conc) % len(LINESTYLES)] if conc in concs else "-"
            name = label if conc is None or (isinstance(conc, float) and math.isnan(conc)) else f"{label} c={int(conc)}"
            ax.plot(curve["x"], curve["value_ms"], ls, color=colour, label=name, drawstyle="steps-post")
            xmax = max(xmax, float(curve["x"].max()))
            positive = curve["value_ms"][curve["value_ms"] > 0]
            if not positive.empty:
                lows.append(float(positive.min()))
                highs.append(float(positive.max()))
        if lows and max(highs) / min(lows) > 20:
            _log_y(ax)
        ax.set_xscale("log")
        ticks = [1.0 / (1.0 - p / 100.0) for p in hdr.PERCENTILE_TICKS if 1.0 / (1.0 - p / 100.0) <= xmax * 1.01]
        ax.set_xlim(1.0, max(ticks[-1] if ticks else 10.0, xmax) * 1.2)
        ax.xaxis.set_major_locator(FixedLocator([1.0] + ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "0%" if v <= 1.0 else _percent_label(v)))
        ax.set_xlabel("percentile")
        ax.set_ylabel(f"{metric.upper()} (ms)")
        if len(rows):
            ax.legend(fontsize=8, ncol=2 if len(rows) > 6 else 1)
    return fig


def save(fig: Figure, directory: str | Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.svg`` into ``directory`` and close the figure.

    The layout is computed once, for the PNG: the SVG reuses it (a second constrained layout
    costs a third of a figure's time and moves nothing by more than a point).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=130 if ext == "png" else None, transparent=True)
        fig.set_layout_engine("none")
        paths.append(path)
    plt.close(fig)
    return paths
