"""Write a report folder: summary.csv, comparison.md, plots (PNG + SVG) and one self-contained report.html."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import intervals
from analysis.checks import Issue, comparability
from analysis.compare import Comparison, compare_labels
from analysis.page import image, page_start, table_html
from analysis.summary import summary, write_csv

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass
class Report:
    """What :func:`write_report` produced, for the caller to print or test."""

    out_dir: Path
    summary_csv: Path
    comparison_md: Path
    html: Path
    plots: list[Path] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)


def ordered_labels(runs: pd.DataFrame, baseline: str | None = None) -> list[str]:
    """Labels in order of first appearance, ``baseline`` first when given."""
    labels = [str(x) for x in pd.unique(runs["label"])]
    if baseline is not None:
        if baseline not in labels:
            raise ValueError(f"--baseline '{baseline}' is not a label of these runs; labels: {', '.join(labels)}")
        labels.remove(baseline)
        labels.insert(0, baseline)
    return labels


def comparisons(runs: pd.DataFrame, labels: list[str]) -> list[Comparison]:
    """Every other label against the first (the baseline, A)."""
    return [compare_labels(runs, labels[0], other) for other in labels[1:]]


def _select_concurrencies(hists: pd.DataFrame, limit: int = 3) -> list[float]:
    """Concurrencies shared by every label (else all), thinned to lowest, middle and highest."""
    per_label = [set(g["concurrency"].dropna()) for _, g in hists.groupby("label")]
    shared = sorted(set.intersection(*per_label)) if per_label else []
    pool = shared or sorted(set(hists["concurrency"].dropna()))
    if len(pool) <= limit:
        return pool
    picks = {pool[0], pool[len(pool) // 2], pool[-1]}
    return sorted(picks)


def make_plots(runs: pd.DataFrame, hists: pd.DataFrame | None, plot_dir: Path) -> list[Path]:
    """Every report figure, written as PNG and SVG; returns the PNG paths in report order."""
    from analysis import plots  # matplotlib: only a report that draws pays for it (~0.5 s)
    from analysis.server_plots import timeline_plots, ttft_plot

    written: list[Path] = []
    written += plots.save(plots.throughput(runs), plot_dir, "output_throughput")
    for metric in LATENCY_METRICS:
        column = f"p99_{metric}_ms"
        if column in runs and runs[column].notna().any():
            written += plots.save(plots.latency(runs, metric), plot_dir, f"{metric}_vs_concurrency")
    if "p99_ttft_ms" in runs and runs["p99_ttft_ms"].notna().any():
        written += plots.save(plots.latency_throughput(runs), plot_dir, "latency_throughput")
    if "mean_reasoning_time_ms" in runs and runs["mean_reasoning_time_ms"].notna().any():
        written += plots.save(plots.reasoning_answer(runs), plot_dir, "reasoning_vs_answer_time")
    if hists is not None and not hists.empty:
        pairs = sorted({(r.input_len, r.output_len) for r in hists.itertuples()}, key=str)
        for inp, outl in pairs:
            sub = hists[(hists["input_len"] == inp) & (hists["output_len"] == outl)] if len(pairs) > 1 else hists
            concs = _select_concurrencies(sub)
            sub = sub[sub["concurrency"].isin(concs)]
            suffix = f"_{_n(inp)}x{_n(outl)}" if len(pairs) > 1 else ""
            for metric in LATENCY_METRICS:
                if (sub["metric"] == metric).any():
                    title = f"{metric.upper()} percentile distribution ({_n(inp)} in / {_n(outl)} out)"
                    written += plots.save(plots.hdr_curves(sub, metric, title), plot_dir, f"hdr_{metric}{suffix}")
    written += ttft_plot(runs, plot_dir)
    if "sessions_by_turn" in runs and runs["sessions_by_turn"].map(lambda v: isinstance(v, list) and bool(v)).any():
        written += plots.save(plots.ttft_by_turn(runs), plot_dir, "ttft_by_turn")
    written += timeline_plots(runs, plot_dir)
    return [p for p in written if p.suffix == ".png"]


def _n(value: float | None) -> str:
    return "?" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))


def comparison_markdown(issues: list[Issue], comps: list[Comparison], labels: list[str]) -> str:
    """comparison.md: the issues across all runs, then one section per comparison."""
    lines = ["# Comparison", ""]
    if len(labels) < 2:
        lines += [f"Only one set of runs ({', '.join(labels)}): nothing to compare.", ""]
        lines += ["## Comparability", ""] + ([f"- **{i.severity}**: {i.message}" for i in issues] or ["- no issues found"])
        return "\n".join(lines) + "\n"
    for comp in comps:
        lines += ["#" + line if line.startswith("#") else line for line in comp.to_markdown().splitlines()]
    return "\n".join(lines) + "\n"




METHOD_COLUMNS = ("label", "format", "engine", "engine_version", "input_len", "output_len", "concurrency",
                  "num_prompts", "warmup_requests", "ignore_eos", "burst", "client_saturated", "trace_behind",
                  "trace_lag_p99_ms", "partial",
                  "error_rate", "engine_eager", "engine_context_length", "engine_max_num_seqs", "time_scale",
                  "repeats")


def method_table(runs: pd.DataFrame) -> pd.DataFrame:
    """How each run was measured: what a reader checks before trusting a figure."""
    return runs[[c for c in METHOD_COLUMNS if c in runs.columns]]


def render_html(title: str, table: pd.DataFrame, issues: list[Issue], comps: list[Comparison], pngs: list[Path],
                method: pd.DataFrame | None = None) -> str:
    """One HTML page with everything inline (styles, tables, images): attachable to a ticket as is."""
    parts = [page_start(title)]
    parts.append("<h2>Comparability</h2><ul>")
    parts += [f"<li class='{i.severity}'><b>{i.severity}</b>: {html.escape(i.message)}</li>" for i in issues]
    if not issues:
        parts.append("<li class='ok'>no issues found</li>")
    parts.append("</ul>")
    for comp in comps:
        parts.append(f"<h2>{html.escape(comp.b)} (B) vs {html.escape(comp.a)} (A)</h2><h3>Conclusions the data supports</h3><ul>")
        parts += [f"<li class='ok'>{html.escape(c.full_text)}</li>" for c in comp.supported] or ["<li class='muted'>none</li>"]
        parts.append("</ul>")
        if comp.unsupported:
            parts.append("<h3>Differences the data does not support</h3><ul>")
            parts += [f"<li class='warning'>{html.escape(c.text)} — {html.escape(c.reason)}</li>"
                      for c in comp.unsupported]
            parts.append("</ul>")
        parts.append("<details><summary>side by side, per concurrency</summary>" + table_html(comp.table) + "</details>")
    parts.append("<h2>Summary</h2>" + table_html(table))
    if method is not None and not method.empty:
        parts.append("<details><summary>how each run was measured</summary>" + table_html(method) + "</details>")
    parts.append("<h2>Plots</h2>")
    parts += [image(p) for p in pngs if not p.name.startswith("timeline_")]
    timelines = [p for p in pngs if p.name.startswith("timeline_")]
    if timelines:  # one per point: folded, so a long sweep does not bury the other plots
        parts.append(f"<h2>Server timelines</h2><details><summary>client and server over time, one per point "
                     f"({len(timelines)})</summary>")
        parts += [image(p) for p in timelines]
        parts.append("</details>")
    parts.append("<p class='muted'>Written by loadgen-report.</p></body></html>")
    return "\n".join(parts)


def write_report(runs: pd.DataFrame, out_dir: str | Path, hists: pd.DataFrame | None = None,
                 baseline: str | None = None, title: str = "loadgen report", draw: bool = True) -> Report:
    """Write summary.csv, comparison.md, plots/ and report.html into ``out_dir``.

    ``draw=False`` leaves plots/ out: drawing is most of a report's time, and a CI job that reads
    summary.csv or comparison.md does not need it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = intervals.annotate(runs)  # repeated points (loadgen --repeat) get 95 % intervals
    labels = ordered_labels(runs, baseline)
    table = summary(runs)
    csv_path = out / "summary.csv"
    write_csv(table, str(csv_path))
    issues = comparability(runs)
    comps = comparisons(runs, labels)
    md_path = out / "comparison.md"
    md_path.write_text(comparison_markdown(issues, comps, labels), encoding="utf-8")
    pngs = make_plots(runs, hists, out / "plots") if draw else []
    html_path = out / "report.html"
    html_path.write_text(render_html(title, table, issues, comps, pngs, method_table(runs)), encoding="utf-8")
    return Report(out, csv_path, md_path, html_path, pngs, issues, comps)
