"""A live-history session against real vLLM (CPU build, tiny model): every turn's
``usage.prompt_tokens`` equals the length loadgen expected, the server's actual replies
included (whatever text the tiny model generates)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import process, vllm_cpu
from loadgen.store import read_requests

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not vllm_cpu.is_ready(), reason="real vLLM-CPU not installed: run `make vllm-cpu`"),
]

SERVED = "tiny-r1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from launcher.lifecycle import launch

    srv = launch("vllm", preset="tiny-cpu", log_path=tmp_path_factory.mktemp("vllm") / "server.log",
                 ready_timeout_s=420)
    group = (srv.pgid, srv.pid)
    try:
        yield srv
    finally:
        srv.stop(timeout_s=20)
        assert process.live_tree(*group) == set(), "a vLLM process survived stop()"


@pytest.mark.parametrize("history", ["live", "recorded"])
def test_three_turn_sessions_count_exactly_on_vllm(server, tmp_path: Path, history: str) -> None:
    argv = [sys.executable, "-c", "from loadgen.cli import main; main()", "--base-url", server.base_url,
            "--backend", "openai-chat", "--model", SERVED, "--tokenizer", str(vllm_cpu.default_model_dir()),
            "--dataset-name", "sessions", "--num-prompts", "3", "--session-turns", "3",
            "--turn-input-len", "24", "--turn-output-len", "12", "--system-prompt-len", "32",
            "--history", history, "--concurrency", "3", "--session-header", "X-Session-Id",
            "--output-dir", str(tmp_path), "--no-progress"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert res.returncode == 0, res.stderr[-2000:]
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert result["completed"] == 9 and result["sessions"]["completed"] == 3
    rows = read_requests(tmp_path / result["per_request"]["requests"])
    assert sorted(zip(rows["session"].tolist(), rows["turn"].tolist(), strict=True)) == \
        [(s, t) for s in range(3) for t in range(3)]
    assert (rows["server_prompt_tokens"] == rows["input_len"]).all(), rows[["turn", "input_len", "server_prompt_tokens"]]
    assert result["prompt_token_mismatches"] == 0
