"""Phase and progress from real engine log lines; the incremental log reader."""

from __future__ import annotations

from pathlib import Path

from launcher.readiness import LogTail, Progress, parse_progress

VLLM_082 = [
    "INFO 04-01 10:00:00 [api_server.py:981] vLLM API server version 0.8.2",
    "INFO 04-01 10:00:05 [__init__.py:239] Automatically detected platform cuda.",
    "INFO 04-01 10:00:30 [gpu_model_runner.py:1174] Starting to load model /mnt/models/DeepSeek-R1...",
    "Loading safetensors checkpoint shards:  45% Completed | 73/163 [02:10<02:40,  1.78s/it]",
    "INFO 04-01 10:06:00 [gpu_model_runner.py:1186] Model loading took 79.5 GB and 330.1 seconds",
    "INFO 04-01 10:06:40 [kv_cache_utils.py:566] GPU KV cache size: 183,264 tokens",
    "INFO 04-01 10:06:41 [core.py:151] init engine (profile, create kv cache, warmup model) took 40.2 seconds",
    "INFO 04-01 10:06:42 [api_server.py:1028] Starting vLLM API server on http://0.0.0.0:8000",
]
SGLANG_045 = [
    "[2025-04-01 10:00:01 TP0] Init torch distributed begin.",
    "[2025-04-01 10:00:09 TP0] Load weight begin. avail mem=94.62 GB",
    "Loading safetensors checkpoint shards:  12%|█▏        | 20/163 [00:40<04:46,  2.00s/it]",
    "[2025-04-01 10:10:13 TP0] Load weight end. type=DeepseekV3ForCausalLM, dtype=torch.bfloat16, avail mem=15.18 GB",
    "[2025-04-01 10:10:14 TP0] Memory pool end. avail mem=9.10 GB",
    "[2025-04-01 10:10:15 TP0] Capture cuda graph begin. This can take up to several minutes.",
    "INFO:     Uvicorn running on http://0.0.0.0:8000 (Press CTRL+C to quit)",
    "[2025-04-01 10:12:01] The server is fired up and ready to roll!",
]


def phases(lines: list[str]) -> tuple[list[str], Progress]:
    progress = Progress()
    seen = []
    for line in lines:
        parse_progress(line, progress)
        if not seen or seen[-1] != progress.phase:
            seen.append(progress.phase)
    return seen, progress


def test_vllm_phases_and_shards() -> None:
    seen, progress = phases(VLLM_082)
    assert seen == ["parsing arguments", "initialising devices", "loading weights", "weights loaded",
                    "allocating KV cache", "warming up", "serving"]
    assert (progress.shards_done, progress.shards_total, progress.percent) == (73, 163, 45.0)


def test_sglang_phases_and_shards() -> None:
    seen, progress = phases(SGLANG_045)
    assert seen[-1] == "serving" and "capturing graphs" in seen and "allocating KV cache" in seen
    assert (progress.shards_done, progress.shards_total, progress.percent) == (20, 163, 12.0)
    loading = Progress()
    parse_progress(SGLANG_045[2], loading)
    assert "loading weights 20/163 shards (12%)" in loading.describe()


def test_phase_never_goes_back() -> None:
    progress = Progress()
    parse_progress("Starting vLLM API server on http://0.0.0.0:8000", progress)
    parse_progress("Automatically detected platform cuda.", progress)
    assert progress.phase == "serving"


def test_log_tail_handles_carriage_returns_and_partial_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    tail = LogTail(log)
    assert tail.read_new() == []  # not created yet
    with open(log, "w") as fh:
        fh.write("one\nLoading: 1/3\rLoading: 2/3\rLoad")
        fh.flush()
        assert tail.read_new() == ["one", "Loading: 1/3", "Loading: 2/3"]
        fh.write("ing: 3/3\n")
        fh.flush()
        assert tail.read_new() == ["Loading: 3/3"]
        fh.write("no newline yet")
    assert tail.read_new() == []
    assert tail.flush() == ["no newline yet"]
