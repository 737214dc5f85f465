"""Where the project's own files are: the checkout the launcher runs from.

Side venvs (``.venv-vllm``, ``.venv-sglang*``), presets' ``{project}`` placeholder
and the launcher's state folder are all relative to it.
"""

from __future__ import annotations

from pathlib import Path


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
