"""The one base of every error analysis raises on purpose.

Each message is one line naming the file or value and the fix; ``loadgen-report`` and
``loadgen compare`` print it as ``PROG: error: ...`` with exit code 2::

    AnalysisError
    ├── LoadError (ValueError)       load.py: a path that cannot be read as results
    │   └── NothingUsable            every file found was skipped (``skipped`` says why)
    ├── FormatError (ValueError)     formats.py: a record no known producer wrote
    ├── NotComparable (ValueError)   gate.py: BASE and NEW measured different things
    └── CostError (ValueError)       cost.py: a price or GPU count that gives no cost
"""

from __future__ import annotations


class AnalysisError(Exception):
    """Base of analysis's own errors."""
