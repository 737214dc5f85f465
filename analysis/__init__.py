"""analysis: result files to tables, comparisons, plots and HDR histograms.

Usable from a notebook::

    import analysis
    runs = analysis.load("results/")
    analysis.summary(runs)
    cmp = analysis.compare(runs[runs.label == "a"], runs[runs.label == "b"])
    print(cmp.to_markdown())
"""

from analysis.checks import Issue, comparability
from analysis.compare import Comparison, compare, compare_labels
from analysis.load import LoadError, histograms, load, merge_histograms, requests
from analysis.summary import summary

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "Issue",
    "LoadError",
    "comparability",
    "compare",
    "compare_labels",
    "histograms",
    "load",
    "merge_histograms",
    "requests",
    "summary",
]
