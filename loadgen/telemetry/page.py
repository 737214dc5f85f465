"""One Prometheus text page → the values the vocabulary needs, plus the raw samples.

Parsing is ``prometheus_client``'s text parser; this module only folds its
samples into sums per name (label sets of one name are engines or ranks of one
deployment) and keeps every non-bucket sample under its raw name and labels, so
the side file stays faithful to what the server said.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from loadgen.errors import LoadgenError
from loadgen.telemetry.vocab import CONCEPTS, HISTOGRAMS, SCALARS, WANTED, Concept

# Name prefixes of the vocabulary's families (counters without ``_total``: their TYPE line may use either).
_PREFIXES = tuple(sorted({n[: -len("_total")] if n.endswith("_total") else n for c in CONCEPTS for n in c.names}))
_COMMENTS = ("# HELP ", "# TYPE ")


class PageError(LoadgenError, ValueError):
    """The body is not Prometheus text; the message says what was received."""


@dataclass
class Hist:
    """A histogram summed over label sets: cumulative bucket counts by upper bound."""

    sum: float = 0.0
    count: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)


@dataclass
class Page:
    """What one scrape read. ``values`` holds every label set of each wanted scalar name."""

    values: dict[str, list[float]] = field(default_factory=dict)
    hists: dict[str, Hist] = field(default_factory=dict)
    raw: dict[str, float] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        """Wanted names present (histograms by their ``_count`` series)."""
        return set(self.values) | {f"{h}_count" for h in self.hists}


def vocabulary_lines(text: str) -> str:
    """Only the lines of the vocabulary's families, without buckets: what a scrape during
    the run needs. It cuts the parser's work on a vLLM page about sevenfold (the parser is
    the whole cost of a scrape); the full page is parsed before and after the run."""
    keep = []
    for line in text.split("\n"):
        if line.startswith(_PREFIXES):
            if "_bucket{" not in line and "_created" not in line:
                keep.append(line)
        elif line.startswith(_COMMENTS) and line[7:].startswith(_PREFIXES):
            keep.append(line)
    return "\n".join(keep) + "\n"


def _key(name: str, labels: Mapping[str, str]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def parse_page(text: str, *, keep_raw: bool = True, yield_gil: bool = False) -> Page:
    """Fold a page into a :class:`Page`. ``yield_gil`` briefly releases the GIL after each
    family, so a scraping thread never holds it for a whole page while the client's
    event loop waits for it."""
    page = Page()
    try:
        families = text_string_to_metric_families(text)
        for fam in families:
            for s in fam.samples:
                name = s.name
                if keep_raw and not name.endswith("_bucket") and not name.endswith("_created"):
                    page.raw[_key(name, s.labels)] = float(s.value)
                if name not in WANTED:
                    continue
                if name.endswith("_bucket") or name.endswith("_sum") or name.endswith("_count"):
                    base, _, part = name.rpartition("_")
                    h = page.hists.setdefault(base, Hist())
                    if part == "bucket":
                        le = float(s.labels.get("le", "inf").replace("+Inf", "inf"))
                        h.buckets[le] = h.buckets.get(le, 0.0) + float(s.value)
                    elif part == "sum":
                        h.sum += float(s.value)
                    else:
                        h.count += float(s.value)
                else:
                    page.values.setdefault(name, []).append(float(s.value))
            if yield_gil:
                time.sleep(0)
    except ValueError as exc:
        head = text[:60].replace("\n", " ")
        raise PageError(f"not Prometheus text ({exc}); it starts with {head!r}") from None
    return page


def scalar(page: Page, concept: Concept, name: str) -> float | None:
    vals = [v for v in page.values.get(name, ()) if not math.isnan(v)]
    if not vals:
        return None
    return sum(vals) / len(vals) if concept.agg == "mean" else sum(vals)


def normalise(page: Page, names: Mapping[str, str]) -> tuple[dict[str, float], dict[str, Hist]]:
    """(scalar concept → value, histogram concept → Hist) under the chosen raw names."""
    out: dict[str, float] = {}
    for c in SCALARS:
        name = names.get(c.key)
        if name is not None:
            v = scalar(page, c, name)
            if v is not None:
                out[c.key] = v
    hists = {c.key: page.hists[names[c.key]] for c in HISTOGRAMS if names.get(c.key) in page.hists}
    return out, hists


def quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """Quantile from cumulative (upper bound, count) pairs, interpolated linearly inside the
    bucket as Prometheus's ``histogram_quantile`` does; None without observations."""
    pairs = sorted(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    total = pairs[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # the highest finite bound, as Prometheus answers
            width = count - prev_count
            frac = (rank - prev_count) / width if width > 0 else 1.0
            return prev_bound + (bound - prev_bound) * frac
        prev_bound, prev_count = bound, count
    return prev_bound


def delta(last: Hist, first: Hist | None) -> Hist:
    """Observations between two scrapes of one histogram (a server restart resets the counts)."""
    if first is None or last.count < first.count:
        return last
    return Hist(
        sum=last.sum - first.sum,
        count=last.count - first.count,
        buckets={le: c - first.buckets.get(le, 0.0) for le, c in last.buckets.items()},
    )
