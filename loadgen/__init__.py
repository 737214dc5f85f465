"""loadgen: a streaming load generator for LLM inference servers.

Notebook use::

    import loadgen
    res = loadgen.load_result("results/openai-c8-rinf-i1024-o128-20250101-120000.json")
    hists = loadgen.read_hlog("results/openai-c8-rinf-i1024-o128-20250101-120000.hlog")
    hists["itl"].get_value_at_percentile(99)          # µs

    offsets = loadgen.release_offsets(1000, loadgen.ArrivalSpec(50.0, "gamma", 0.5), seed=1)
    figs = loadgen.per_request(records)               # records: list[RequestRecord]
    summary = loadgen.summarize(records, start_ns, end_ns, percentiles=[50, 99])

Everything but the records is imported on first use, so ``import loadgen`` stays cheap
for the client process.
"""

from __future__ import annotations

import importlib
from typing import Any

from loadgen.records import Prompt, RequestRecord

__version__ = "0.1.0"

_LAZY = {
    "RunConfig": "loadgen.config",
    "ConfigError": "loadgen.config",
    "ArrivalSpec": "loadgen.schedule",
    "release_offsets": "loadgen.schedule",
    "per_request": "loadgen.metrics",
    "summarize": "loadgen.aggregate",
    "load_result": "loadgen.results",
    "read_hlog": "loadgen.hdr_record",
    "histogram_of": "loadgen.hdr_record",
    "run_all": "loadgen.sweep",
}

__all__ = ["Prompt", "RequestRecord", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'loadgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
