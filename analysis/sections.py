"""A loadgen result's optional sections (``sessions``, ``trace``) as run columns: the pieces the
modules that flatten each one share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd


def section(obj: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """``obj[key]`` when it is an object (a result that has the section), else ``None``."""
    value = obj.get(key)
    return value if isinstance(value, Mapping) else None


def sub(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``obj[key]`` when it is an object, else an empty one (a figure the producer did not write)."""
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def shown_if_any(runs: pd.DataFrame, marker: str, columns: dict[str, str]) -> dict[str, str]:
    """``columns`` when any run has its ``marker`` column filled, else none: a table of runs
    without the section gains no empty columns."""
    if marker not in runs.columns or not runs[marker].notna().any():
        return {}
    return columns
