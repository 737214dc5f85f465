"""loadgen: a streaming load generator for LLM inference servers.

Notebook use::

    import loadgen
    prompts = ...            # loadgen.workload
    records = ...            # loadgen.runner
"""

from loadgen.records import Prompt, RequestRecord

__version__ = "0.1.0"

__all__ = ["Prompt", "RequestRecord", "__version__"]
