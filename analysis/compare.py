"""Side-by-side comparison of two sets of runs, with the conclusions their data supports.

A conclusion is stated only for a stretch of consecutive concurrencies where the
ratio points the same way by more than :data:`THRESHOLD`; single-point wins are
not generalised. A conclusion whose figure a difference in *method* distorts
(EOS handling, lengths, dataset, bursts, a saturated client, partial runs) is
listed as unsupported, with the reason, instead of being stated. A difference
in *engine settings* does not make the measurement wrong, only its attribution:
such conclusions stand, qualified as true of the deployments as configured.
When both sides ran a point more than once (``loadgen --repeat``), a conclusion
also needs the two confidence intervals (:mod:`analysis.intervals`) to separate at
every point of its stretch; where they overlap it is "not supported by the data".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from analysis import intervals
from analysis.checks import Issue, comparability

THRESHOLD = 0.10  # a difference under 10 % is reported as "similar"
NOT_SUPPORTED = "not supported by the data"

# (column, readable name, higher is better, family used to match comparability issues)
FIGURES: tuple[tuple[str, str, bool, str], ...] = (
    ("output_throughput", "output throughput", True, "output_throughput"),
    ("mean_ttft_ms", "mean TTFT", False, "ttft"),
    ("p99_ttft_ms", "p99 TTFT", False, "ttft"),
    ("mean_tpot_ms", "mean TPOT", False, "tpot"),
    ("p99_tpot_ms", "p99 TPOT", False, "tpot"),
    ("p99_itl_ms", "p99 ITL", False, "itl"),
    ("p99_e2el_ms", "p99 E2EL", False, "e2el"),
)


@dataclass
class Conclusion:
    """One statement about B relative to A, and whether the data supports it."""

    text: str
    figure: str
    supported: bool = True
    caveats: tuple[str, ...] = ()
    qualifiers: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """Why it is not supported: the comparability caveats, then the intervals' verdict."""
        method = [c for c in self.caveats if not c.startswith(NOT_SUPPORTED)]
        data = [c for c in self.caveats if c.startswith(NOT_SUPPORTED)]
        return "; ".join(([f"not comparable: {'; '.join(method)}"] if method else []) + data)

    @property
    def full_text(self) -> str:
        """The statement with its qualifiers (deployment differences it is conditional on)."""
        if not self.qualifiers:
            return self.text
        return f"{self.text} — for these deployments as configured ({'; '.join(self.qualifiers)})"


@dataclass
class Comparison:
    """The result of :func:`compare`: a table per concurrency, conclusions, and the issues found."""

    a: str
    b: str
    table: pd.DataFrame
    conclusions: list[Conclusion] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def supported(self) -> list[Conclusion]:
        return [c for c in self.conclusions if c.supported]

    @property
    def unsupported(self) -> list[Conclusion]:
        return [c for c in self.conclusions if not c.supported]

    def to_markdown(self) -> str:
        """The comparison as Markdown: issues first, then conclusions, then the tables."""
        lines = [f"# {self.b} (B) vs {self.a} (A)", ""]
        lines += ["## Comparability", ""]
        lines += [f"- **{i.severity}**: {i.message}" for i in self.issues] or ["- no issues found"]
        lines += ["", "## Conclusions the data supports", ""]
        lines += [f"- {c.full_text}" for c in self.supported] or ["- none: no difference holds over two or more consecutive points"]
        if self.unsupported:
            lines += ["", "## Differences the data does not support", ""]
            lines += [f"- {c.text} — {c.reason}" for c in self.unsupported]
        for (inp, out), group in self.table.groupby(["input_len", "output_len"], sort=True, dropna=False):
            lines += ["", f"## {_fmt_len(inp)} in / {_fmt_len(out)} out", ""]
            lines += _markdown_table(group.drop(columns=["input_len", "output_len"]))
        return "\n".join(lines) + "\n"


def _fmt_len(value: float | None) -> str:
    return "?" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    cols = list(frame.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
                cells.append("—")  # not measured
            elif isinstance(value, float):
                cells.append(f"{value:.3g}" if abs(value) < 10 and not float(value).is_integer() else f"{value:,.1f}")
            else:
                cells.append(str(value))
        out.append("| " + " | ".join(cells) + " |")
    return out


def _ci_text(low: float, high: float) -> str:
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return ""
    return f"{low:,.3g}–{high:,.3g}" if abs(high) < 100 else f"{low:,.0f}–{high:,.0f}"


def _side(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (lengths, concurrency); repeated points are averaged (their intervals kept)."""
    cols = [c for c, *_ in FIGURES if c in runs.columns]
    cols += [f"{c}_ci_{end}" for c in list(cols) for end in ("low", "high") if f"{c}_ci_{end}" in runs.columns]
    keyed = runs.dropna(subset=["concurrency"])
    return keyed.groupby(["input_len", "output_len", "concurrency"], dropna=False)[cols].mean(numeric_only=True)


def table(a_runs: pd.DataFrame, b_runs: pd.DataFrame) -> pd.DataFrame:
    """A and B side by side per (input_len, output_len, concurrency), with B/A ratios; shared points only."""
    a, b = _side(a_runs), _side(b_runs)
    joined = a.join(b, how="inner", lsuffix=" A", rsuffix=" B")
    out = pd.DataFrame(index=joined.index)
    for col, name, _, _ in FIGURES:
        if f"{col} A" not in joined or f"{col} B" not in joined:
            continue
        out[f"{name} A"] = joined[f"{col} A"]
        out[f"{name} B"] = joined[f"{col} B"]
        out[f"{name} B/A"] = joined[f"{col} B"] / joined[f"{col} A"].where(joined[f"{col} A"] != 0)
        for side in ("A", "B"):
            low, high = f"{col}_ci_low {side}", f"{col}_ci_high {side}"
            if low in joined and joined[low].notna().any():
                out[f"{name} {side} 95% CI"] = [_ci_text(lo, hi) for lo, hi in zip(joined[low], joined[high], strict=True)]
    out = out.dropna(axis=1, how="all")
    return out.reset_index()


def _segments(points: list[tuple[float, float]], higher_better: bool) -> list[tuple[int, int, str]]:
    """Maximal runs of consecutive points classified alike: ``b`` (B better), ``a`` or ``same``."""
    classes = []
    for _, ratio in points:
        if ratio is None or math.isnan(ratio) or ratio <= 0:
            classes.append("?")
        elif abs(math.log(ratio)) < math.log1p(THRESHOLD):
            classes.append("same")
        else:
            classes.append("b" if (ratio > 1) == higher_better else "a")
    segs = []
    start = 0
    for i in range(1, len(classes) + 1):
        if i == len(classes) or classes[i] != classes[start]:
            segs.append((start, i - 1, classes[start]))
            start = i
    return segs


def _where(concs: list[float], first: int, last: int) -> str:
    c0, c1 = int(concs[first]), int(concs[last])
    if first == 0 and last == len(concs) - 1:
        return "at every concurrency" if len(concs) > 1 else f"at concurrency {c0}"
    if last == len(concs) - 1:
        return f"from concurrency {c0} up"
    if first == 0:
        return f"up to concurrency {c1}"
    return f"at concurrency {c0}–{c1}"


def _overlaps(group: pd.DataFrame, col: str, first: int, last: int) -> list[int]:
    """Concurrencies of the stretch where A's and B's intervals of ``col`` overlap."""
    names = [f"{col}_ci_{e} {s}" for s in ("A", "B") for e in ("low", "high")]
    if not all(n in group for n in names):
        return []
    out = []
    for row in group.iloc[first : last + 1].itertuples(index=False):
        values = dict(zip(group.columns, row, strict=True))
        sep = intervals.separated((values[names[0]], values[names[1]]), (values[names[2]], values[names[3]]))
        if sep is False:
            out.append(int(values["concurrency"]))
    return out


def conclusions(tab: pd.DataFrame, a: str, b: str, issues: Sequence[Issue] = (),
                ci: pd.DataFrame | None = None) -> list[Conclusion]:
    """Statements that hold over consecutive concurrencies, qualified by the issues that distort them.

    ``ci`` (from :func:`_intervals_table`) holds each side's interval per point;
    a stretch where they overlap somewhere is not supported by the data.
    """
    out: list[Conclusion] = []
    groups = list(tab.groupby(["input_len", "output_len"], sort=True, dropna=False))
    for (inp, outl), group in groups:
        group = group.sort_values("concurrency")
        concs = list(group["concurrency"])
        cis = (ci[(ci["input_len"] == inp) & (ci["output_len"] == outl)].set_index("concurrency")
               .reindex(concs).reset_index() if ci is not None and not ci.empty else None)
        suffix = f" ({_fmt_len(inp)} in / {_fmt_len(outl)} out)" if len(groups) > 1 else ""
        for _col, name, higher_better, family in FIGURES:
            rcol = f"{name} B/A"
            if rcol not in group:
                continue
            points = list(zip(concs, group[rcol], strict=True))
            for first, last, cls in _segments(points, higher_better):
                if cls not in ("a", "b"):
                    continue
                if last - first + 1 < 2 and len(points) > 1:
                    continue  # one point is not a trend
                ratios = [r for _, r in points[first : last + 1]]
                where = _where(concs, first, last)
                core, detail = _ratio_phrase(ratios, concs[first : last + 1])
                text = f"{b}'s {name} is {core} {a}'s {where}{suffix}{detail}"
                if not higher_better:
                    text += f": {b if cls == 'b' else a} is lower"
                caveats, qualifiers = _caveats(issues, family, (a, b))
                overlap = _overlaps(cis, _col, first, last) if cis is not None else []
                if overlap:
                    caveats = (*caveats, f"{NOT_SUPPORTED}: the 95 % intervals across repeats overlap "
                               f"at concurrency {', '.join(map(str, overlap))}")
                out.append(Conclusion(text, name, supported=not caveats, caveats=caveats, qualifiers=qualifiers))
    return out


SPREAD = 1.25  # ratios spanning more than this factor are described as a range, not one figure


def _ratio_phrase(ratios: list[float], concs: list[float]) -> tuple[str, str]:
    """("1.37×", " (range …)") when the ratio is steady over the stretch, else its span and direction."""
    lo, hi = min(ratios), max(ratios)
    if len(ratios) == 1 or hi / lo <= SPREAD:
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        detail = f" (range {lo:.2f}–{hi:.2f}×)" if len(ratios) > 1 and hi - lo >= 0.01 else ""
        return f"{geo:.2f}×", detail
    return f"{lo:.2f}–{hi:.2f}×", f" ({ratios[0]:.2f}× at concurrency {int(concs[0])}, {ratios[-1]:.2f}× at {int(concs[-1])})"


QUALIFYING_KINDS = ("engine_settings",)


def _caveats(issues: Sequence[Issue], family: str, labels: tuple[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(issues that make a conclusion about ``family`` unsupported, issues that only qualify it)."""
    relevant = [i for i in issues if i.severity == "warning" and family in i.affects
                and (not i.labels or set(labels) & set(i.labels))]
    blocking = tuple(_short(i) for i in relevant if i.kind not in QUALIFYING_KINDS)
    qualifying = tuple(_short(i).removeprefix("engine settings ") for i in relevant if i.kind in QUALIFYING_KINDS)
    return blocking, qualifying


def _short(issue: Issue) -> str:
    return issue.message.split(" — ")[0].split(". ")[0]


def peak(runs: pd.DataFrame, column: str = "output_throughput") -> pd.DataFrame:
    """The best value of ``column`` per label and lengths, with the concurrency where it was reached.

    Repeats of a point are averaged first (a lucky repeat is not a peak); the
    point's interval columns, when present, come along.
    """
    if runs.empty or column not in runs:
        return pd.DataFrame(columns=["label", "input_len", "output_len", "concurrency", column])
    extra = [c for c in (f"{column}_ci_low", f"{column}_ci_high") if c in runs.columns]
    runs = (runs.dropna(subset=[column, "concurrency"])
            .groupby(["label", "input_len", "output_len", "concurrency"], dropna=False, as_index=False)
            [[column, *extra]].mean())
    idx = runs.groupby(["label", "input_len", "output_len"], dropna=False)[column].idxmax()
    return runs.loc[idx, ["label", "input_len", "output_len", "concurrency", column, *extra]].reset_index(drop=True)


def compare(a: pd.DataFrame, b: pd.DataFrame, name_a: str | None = None, name_b: str | None = None) -> Comparison:
    """Compare runs ``b`` against runs ``a`` (frames from :func:`analysis.load`), point by point.

    The comparability issues of the two sets together come first in the result;
    conclusions distorted by one of them are marked unsupported.
    """
    name_a = name_a or _name(a, "A")
    name_b = name_b or _name(b, "B")
    a = intervals.annotate(a.assign(label=name_a))
    b = intervals.annotate(b.assign(label=name_b))
    issues = comparability(pd.concat([a, b], ignore_index=True))
    tab = table(a, b)
    concl = conclusions(tab, name_a, name_b, issues, _intervals_table(a, b)) if not tab.empty else []
    pa, pb = peak(a), peak(b)
    for row_a in pa.itertuples():
        match = pb[(pb["input_len"] == row_a.input_len) & (pb["output_len"] == row_a.output_len)]
        if match.empty or not row_a.output_throughput:
            continue
        row_b = match.iloc[0]
        text = (f"peak output throughput ({_fmt_len(row_a.input_len)}/{_fmt_len(row_a.output_len)}): "
                f"{name_a} {row_a.output_throughput:,.0f} tok/s at concurrency {int(row_a.concurrency)}, "
                f"{name_b} {row_b['output_throughput']:,.0f} tok/s at concurrency {int(row_b['concurrency'])} "
                f"(B/A {row_b['output_throughput'] / row_a.output_throughput:.2f}×"
                f"{_sweep_end_note(a, b, row_a, row_b, name_a, name_b)})")
        caveats, qualifiers = _caveats(issues, "output_throughput", (name_a, name_b))
        ends = ("output_throughput_ci_low", "output_throughput_ci_high")
        if all(e in pa.columns and e in pb.columns for e in ends) and intervals.separated(
                (getattr(row_a, ends[0]), getattr(row_a, ends[1])), (row_b[ends[0]], row_b[ends[1]])) is False:
            caveats = (*caveats, f"{NOT_SUPPORTED}: the peaks' 95 % intervals across repeats overlap")
        concl.append(Conclusion(text, "peak output throughput", supported=not caveats, caveats=caveats,
                                qualifiers=qualifiers))
    return Comparison(name_a, name_b, tab, concl, issues)


def _still_rising(runs: pd.DataFrame, input_len: float, output_len: float, concurrency: float) -> bool:
    """Whether a peak sits at the highest concurrency its sweep measured and is more than
    ``THRESHOLD`` above the point before it: throughput still climbing, no plateau reached."""
    same = runs.dropna(subset=["output_throughput", "concurrency"])
    same = same[(same["input_len"] == input_len) & (same["output_len"] == output_len)]
    by_conc = same.groupby("concurrency")["output_throughput"].mean().sort_index()
    if len(by_conc) < 2 or concurrency < by_conc.index[-1]:
        return False
    return bool(by_conc.iloc[-1] > (1.0 + THRESHOLD) * by_conc.iloc[-2])


def _sweep_end_note(a: pd.DataFrame, b: pd.DataFrame, row_a, row_b: pd.Series, name_a: str, name_b: str) -> str:
    """A peak still climbing at the sweep's last point is no plateau: its ratio is the sweep's,
    not necessarily the deployments' (a quick sweep stops below either engine's capacity)."""
    rising = [name for name, runs, row in ((name_a, a, row_a._asdict()), (name_b, b, row_b))
              if _still_rising(runs, row["input_len"], row["output_len"], row["concurrency"])]
    if not rising:
        return ""
    return (f"; {' and '.join(rising)} still rising at the sweep's highest concurrency: the sweep's peak, "
            f"not necessarily the deployment's")


def _intervals_table(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Both sides' interval columns per (lengths, concurrency), suffixed `` A`` / `` B``."""
    cols = [f"{c}_ci_{e}" for c, *_ in FIGURES for e in ("low", "high")]
    sa, sb = (s[[c for c in cols if c in s.columns]] for s in (_side(a), _side(b)))
    return sa.join(sb, how="inner", lsuffix=" A", rsuffix=" B").reset_index()


def _name(runs: pd.DataFrame, default: str) -> str:
    labels = [str(x) for x in pd.unique(runs["label"])] if "label" in runs else []
    return labels[0] if len(labels) == 1 else default


def compare_labels(runs: pd.DataFrame, a: str, b: str) -> Comparison:
    """Compare two labels of one frame of runs."""
    for name in (a, b):
        if name not in set(runs["label"]):
            known = ", ".join(sorted(map(str, runs["label"].unique())))
            raise ValueError(f"no runs labelled '{name}'; labels present: {known}")
    return compare(runs[runs["label"] == a], runs[runs["label"] == b], a, b)
