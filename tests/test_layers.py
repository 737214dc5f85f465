"""The layering of ARCHITECTURE.md ("Who may import whom"), checked by import-linter's contracts in setup.cfg.

A broken contract names the import chain; the fix is to move the code to the layer
that may hold it, not to loosen the contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def lint_imports(root: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """``lint-imports`` over the packages under ``root``, with the contracts of its setup.cfg."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                           "lint_imports_command()", "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=240, check=False)


def test_every_layering_contract_is_kept():
    proc = lint_imports()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


def test_a_forbidden_import_is_caught(tmp_path):
    # The same contracts over a copy where analysis imports the launcher: the checker must see it.
    for name in ("loadgen", "launcher", "analysis", "orchestrator"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.ipynb"))
    shutil.copy(REPO_ROOT / "setup.cfg", tmp_path / "setup.cfg")
    (tmp_path / "analysis" / "sneaky.py").write_text("def f():\n    from launcher.plan import build_plan\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "analysis.sneaky -> launcher.plan" in proc.stdout
