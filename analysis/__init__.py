"""analysis: result files to tables, comparisons, plots and HDR histograms."""

__version__ = "0.1.0"
