"""Capacity records (``loadgen search``): load them, compare them by their intervals, write a report.

A record (``NAME.capacity.json``, schema ``loadgen-capacity/1``) holds one
search's answer: the capacity (the highest load at which every probe met every
SLO), the interval where the SLOs stop holding, and every probe. Two capacities
are called different only when their intervals do not overlap; otherwise the
difference is "not supported by the data".

On a sim run with ``--time-scale X`` the search saw latencies X times shorter
than the emulated deployment's; the table states the SLOs at full scale (limits
× X) and a rate capacity at full scale (÷ X). A concurrency capacity does not
change with the time scale.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.formats import engine_settings
from analysis.intervals import separated
from analysis.page import image, page_start, table_html

SCHEMA = "loadgen-capacity/1"
COLUMNS = ("label", "over", "capacity", "interval low", "interval high", "boundary", "unit", "status", "SLOs",
           "goodput target", "input_len", "output_len", "time_scale", "probes", "client_saturated",
           "probe seconds", "search seconds", "engine", "profile")


def _files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.rglob("*.capacity.json"))
        elif p.is_file():
            out.append(p)
    return out


def row(rec: dict[str, Any], path: Path | None = None) -> dict[str, Any]:
    """One table row from one record, at full scale (see the module's note on ``--time-scale``)."""
    server = rec.get("server") or {}
    meta = rec.get("metadata") or {}
    scale = float(server.get("time_scale") or meta.get("time_scale") or 1.0)
    rate = rec.get("over") == "rate"

    def load(x: float | None) -> float | None:
        return None if x is None else (x / scale if rate else x)

    search = rec.get("search") or {}
    slos = []
    for text in search.get("slos", []):
        head, _, limit = text.partition("<=")
        slos.append(f"{head}<={float(limit) * scale:g}" if limit else text)
    low, high = (rec.get("interval") or [None, None])[:2]
    return {
        "label": rec.get("label") or (path.parent.name if path else None),
        "over": rec.get("over"),
        "capacity": load(rec.get("capacity")),
        "interval low": load(low),
        "interval high": load(high),
        "boundary": load(rec.get("boundary")),
        "unit": rec.get("unit"),
        "status": rec.get("status"),
        "SLOs": " ".join(slos),
        "goodput target": search.get("goodput_target"),
        "input_len": rec.get("input_len"),
        "output_len": rec.get("output_len"),
        "time_scale": scale,
        "probes": len(rec.get("probes") or []),
        "client_saturated": bool(rec.get("client_saturated")),
        "probe seconds": rec.get("duration_s"),
        "search seconds": rec.get("seconds"),
        "engine": meta.get("engine") or server.get("engine"),
        "profile": meta.get("profile") or server.get("profile"),
        "gpus": engine_settings([meta]).get("tensor_parallel"),  # from the launch plan (loadgen-bench's metadata)
        "path": str(path) if path else None,
    }


def load_capacities(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Every capacity record under ``paths``, one row each (empty frame when there is none)."""
    rows = []
    for path in _files(paths):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("schema") == SCHEMA:
            rows.append(row(rec, path))
    return pd.DataFrame(rows, columns=[*COLUMNS, "gpus", "path"])


def _fmt(x: Any) -> str:
    return "?" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def conclusions(table: pd.DataFrame, baseline: str | None = None) -> list[tuple[bool, str]]:
    """(supported, statement) for every label against the first (or ``baseline``)."""
    if len(table) < 2:
        return []
    labels = list(table["label"])
    base = baseline if baseline in labels else labels[0]
    a = table[table["label"] == base].iloc[0]
    out = []
    for _, b in table[table["label"] != base].iterrows():
        same = [k for k in ("over", "SLOs", "goodput target", "input_len", "output_len") if a[k] != b[k]
                and not (pd.isna(a[k]) and pd.isna(b[k]))]
        head = (f"capacity of {b['label']} vs {a['label']}: {_fmt(b['capacity'])} vs {_fmt(a['capacity'])} {a['unit']} "
                f"(intervals {_fmt(b['interval low'])}–{_fmt(b['interval high'])} vs "
                f"{_fmt(a['interval low'])}–{_fmt(a['interval high'])})")
        if same:
            out.append((False, f"{head} — not comparable: the searches differ in {', '.join(same)}"))
            continue
        verdict = separated((a["interval low"], a["interval high"]), (b["interval low"], b["interval high"]))
        if verdict:
            more = "more" if b["interval low"] > a["interval high"] else "less"
            out.append((True, f"{b['label']} takes {more} traffic than {a['label']} under these SLOs: {head}"))
        else:
            out.append((False, f"{head} — not supported by the data: the intervals overlap"))
        if a["client_saturated"] or b["client_saturated"]:
            out[-1] = (False, out[-1][1] + "; the client was saturated at an answer, so the server was not the limit")
    return out


def markdown(table: pd.DataFrame, baseline: str | None = None) -> str:
    lines = ["# Capacity under SLOs", ""]
    concl = conclusions(table, baseline)
    lines += ["## Conclusions the data supports", ""]
    lines += [f"- {t}" for ok, t in concl if ok] or ["- none"]
    if any(not ok for ok, _ in concl):
        lines += ["", "## Differences the data does not support", ""]
        lines += [f"- {t}" for ok, t in concl if not ok]
    lines += ["", "## Capacity per label", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(r[c]) else (_fmt(r[c]) if isinstance(r[c], float) else str(r[c]))
                                       for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def figure(table: pd.DataFrame):  # -> matplotlib Figure
    """Capacity per label with its interval as an error bar."""
    from analysis import plots  # matplotlib: imported only to draw

    with plots.style():
        fig, ax = plots._new("Capacity under SLOs (95 % interval)")
        x = list(range(len(table)))
        cap = table["capacity"].astype(float).to_numpy()  # arrays: matplotlib wants numbers, not Series
        low = (cap - table["interval low"].astype(float).to_numpy()).clip(min=0)
        high = (table["interval high"].astype(float).to_numpy() - cap).clip(min=0)
        ax.bar(x, cap, color=[plots.PALETTE[i % len(plots.PALETTE)] for i in x], alpha=0.8)
        ax.errorbar(x, cap, yerr=[low, high], fmt="none", ecolor=plots.INK, capsize=6)
        ax.set_xticks(x, list(table["label"]))
        unit = table["unit"].iloc[0] if len(table) else ""
        ax.set_ylabel(str(unit))
        ax.set_ylim(bottom=0)
    return fig


def write_capacity_report(table: pd.DataFrame, out_dir: str | Path, baseline: str | None = None,
                          title: str = "loadgen capacity", draw: bool = True) -> dict[str, Path]:
    """summary.csv (one row per label), comparison.md, plots/capacity.png (unless ``draw`` is False)
    and report.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = table[list(COLUMNS) + [c for c in table.columns if c.startswith("$/")]]  # + analysis.cost's
    csv = out / "summary.csv"
    table.to_csv(csv, index=False, float_format="%.4g")
    md = out / "comparison.md"
    md.write_text(markdown(table, baseline), encoding="utf-8")
    pngs: list[Path] = []
    if len(table) and draw:
        from analysis import plots

        pngs = [p for p in plots.save(figure(table), out / "plots", "capacity") if p.suffix == ".png"]
    parts = [page_start(title)]
    concl = conclusions(table, baseline)
    parts.append("<h2>Conclusions the data supports</h2><ul>")
    parts += [f"<li class='ok'>{html.escape(t)}</li>" for ok, t in concl if ok] or ["<li class='muted'>none</li>"]
    parts.append("</ul>")
    if any(not ok for ok, _ in concl):
        parts.append("<h2>Differences the data does not support</h2><ul>")
        parts += [f"<li class='warning'>{html.escape(t)}</li>" for ok, t in concl if not ok]
        parts.append("</ul>")
    parts.append("<h2>Capacity per label</h2>" + table_html(table))
    parts += [image(p) for p in pngs]
    parts.append("<p class='muted'>Capacity: the highest load at which every probe met every SLO. Interval: where "
                 "the SLOs stop holding (bootstrap over repeated probes, widened to the search's final bracket). "
                 "See docs/capacity.md.</p></body></html>")
    page = out / "report.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return {"summary_csv": csv, "comparison_md": md, "html": page}
