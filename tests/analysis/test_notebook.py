"""The exploration notebook runs top to bottom on results of a real (short) sim run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from launcher.lifecycle import launch
from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "analysis" / "notebooks" / "explore.ipynb"


def _loadgen(base_url: str, out: Path, label: str) -> None:
    argv = [sys.executable, "-c", "from loadgen.cli import main; main()", "--base-url", base_url,
            "--tokenizer", "deepseek-r1", "--input-len", "32", "--output-len", "16", "--num-prompts", "12",
            "--concurrency", "1,4", "--warmup", "2", "--output-dir", str(out), "--label", label,
            "--result-filename", "serving_benchmark_{concurrency}_{input_len}_{output_len}.json",
            "--save-requests", "--no-progress"]
    env = dict(os.environ)
    proc = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("nb-results")
    dirs = [root / "sim-a", root / "sim-b"]
    with launch("sim", extra_args=("--profile", "fast"), log_path=root / "sim.log", ready_timeout_s=120) as server:
        for d in dirs:
            _loadgen(server.base_url, d, d.name)
    return dirs


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_notebook_executes_on_sim_results(sim_results: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADGEN_RESULTS", os.pathsep.join(str(d) for d in sim_results))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO_ROOT)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "4 runs, labels: sim-a, sim-b" in text
    assert "sim-b (B) vs sim-a (A)" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # 5 curves against concurrency, 4 HDR metrics, 1 pooled HDR plot.
    assert len(images) == 10
