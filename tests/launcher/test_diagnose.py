"""Diagnosis of failed starts from real-looking engine logs (lines as the engines print them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.diagnose import DATA_FILE, LogScanner, diagnose_text, load_signatures

SGLANG_R1_DEFAULT_FRACTION = """\
[2025-04-01 10:00:01 TP0] Init torch distributed begin.
[2025-04-01 10:00:09 TP0] Load weight begin. avail mem=94.62 GB
Loading safetensors checkpoint shards:  50% Completed | 82/163 [05:01<04:58,  3.66s/it]\r\
Loading safetensors checkpoint shards: 100% Completed | 163/163 [10:02<00:00,  3.70s/it]
[2025-04-01 10:10:13 TP0] Load weight end. type=DeepseekV3ForCausalLM, dtype=torch.bfloat16, avail mem=15.18 GB, mem usage=79.44 GB.
[2025-04-01 10:10:13 TP0] Scheduler hit an exception: Traceback (most recent call last):
  File "/sgl-workspace/sglang/python/sglang/srt/model_executor/model_runner.py", line 753, in init_memory_pool
    raise RuntimeError(
RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.
[2025-04-01 10:10:14] Received sigquit from a child process. It usually means the child failed.
"""


def test_data_file_is_valid_and_complete() -> None:
    data = json.loads(DATA_FILE.read_text())
    sigs = load_signatures()
    assert len(sigs) == len(data["signatures"]) >= 20
    ids = [s.id for s in sigs]
    assert len(ids) == len(set(ids)), "signature ids must be unique"
    for sig in sigs:
        assert sig.kind in {"fatal", "wrapper", "warning", "info"}, sig.id
        assert sig.what and sig.fix, sig.id


def test_sglang_memory_failure_is_root_cause_not_the_wrapper() -> None:
    diag = diagnose_text(SGLANG_R1_DEFAULT_FRACTION, "sglang")
    assert diag.failed
    root = diag.root_cause
    assert root is not None and root.signature.id == "sglang_not_enough_memory"
    assert "--mem-fraction-static 0.90" in root.describe()
    assert "sgl-project/sglang#4330" in root.describe()
    kinds = {f.signature.id: f.signature.kind for f in diag.findings}
    assert kinds["sglang_child_dead_wrapper"] == "wrapper"


def test_oom_during_graph_capture_is_told_apart_from_other_oom() -> None:
    capture = "INFO Capturing CUDA graph shapes: 10%\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    loading = "INFO Loading weights\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    assert diagnose_text(capture, "vllm").root_cause.signature.id == "cuda_graph_capture_oom"
    assert diagnose_text(loading, "vllm").root_cause.signature.id == "cuda_oom_other"


@pytest.mark.parametrize(
    ("line", "engine", "expected"),
    [
        ("api_server.py: error: unrecognized arguments: --enable-reasoning", "vllm", "cli_unrecognized_flag"),
        ("vllm serve: error: argument --enable-chunked-prefill: ignored explicit argument 'False'", "vllm", "cli_unrecognized_flag"),
        ("RuntimeError: NCCL Error 1: unhandled cuda error (run with NCCL_DEBUG=INFO for details)", "vllm", "nccl_unhandled_cuda_error"),
        ("OSError: [Errno 98] Address already in use", "vllm", "port_in_use"),
        ("safetensors_rust.SafetensorError: Error while deserializing header: MetadataIncompleteBuffer", "vllm", "safetensors_corrupt"),
        ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`", "vllm", "vllm_kv_cache_no_memory"),
    ],
)
def test_single_fatal_lines(line: str, engine: str, expected: str) -> None:
    diag = diagnose_text(f"INFO starting\n{line}\n", engine)
    assert diag.root_cause is not None and diag.root_cause.signature.id == expected
    assert diag.root_cause.line_no == 2


def test_warnings_do_not_fail_and_clean_logs_pass() -> None:
    text = (
        "WARNING fused_moe.py:882] Using default MoE config. Performance might be sub-optimal! "
        "Config file not found at /x/E=256,N=256,device_name=NVIDIA_H20,dtype=fp8_w8a8.json\n"
        "INFO Starting vLLM API server on http://0.0.0.0:8000\n"
    )
    diag = diagnose_text(text, "vllm")
    assert not diag.failed
    assert [f.signature.id for f in diag.notes] == ["moe_config_missing"]
    assert not diagnose_text("INFO all good\n").findings


def test_engine_filter_and_repeats() -> None:
    text = "Not enough memory. Please try to increase --mem-fraction-static\n" * 8
    assert not diagnose_text(text, "vllm").failed  # an SGLang-only message
    assert len(diagnose_text(text, "sglang").findings) == 1  # eight ranks, one problem


def test_scanner_is_incremental() -> None:
    scanner = LogScanner("vllm")
    assert scanner.feed("INFO loading") is None
    found = scanner.feed("ERROR Engine core initialization failed. See root cause above.")
    assert found is not None and found.signature.kind == "wrapper"
    assert scanner.diagnosis.root_cause is found


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_diagnose_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.log"
    bad.write_text(SGLANG_R1_DEFAULT_FRACTION)
    good = tmp_path / "good.log"
    good.write_text("INFO The server is fired up and ready to roll!\n")
    res = _cli("diagnose", str(bad))
    assert res.returncode == 1
    assert "sglang_not_enough_memory" in res.stdout and "fix:" in res.stdout
    res = _cli("diagnose", str(good))
    assert res.returncode == 0 and "no known failure signature" in res.stdout
    res = _cli("diagnose", str(tmp_path / "absent.log"))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    res = _cli("diagnose", "--json", str(bad))
    assert json.loads(res.stdout)["root_cause"] == "sglang_not_enough_memory"


VLLM_032_BAD_MAX_LEN = """\
(APIServer pid=24196) INFO 11-28 07:27:40 [utils.py:233] non-default args: {'model': '/m/tiny-r1', 'max_model_len': 100000}
Traceback (most recent call last):
  File "/v/bin/vllm", line 8, in <module>
pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig
  Value error, User-specified max_model_len (100000) is greater than the derived max_model_len (max_position_embeddings=4096.0 or model_max_length=None in model's config.json).
    For further information visit https://errors.pydantic.dev/2.14/v/value_error
"""


def test_last_error_line_skips_footers(tmp_path: Path) -> None:
    from launcher.diagnose import last_error_line

    log = tmp_path / "x.log"
    log.write_text(VLLM_032_BAD_MAX_LEN)
    assert last_error_line(log).startswith("Value error, User-specified max_model_len (100000)")
    assert diagnose_text(VLLM_032_BAD_MAX_LEN, "vllm").root_cause.signature.id == "vllm_max_model_len_above_model"
    log.write_text("starting\nstill starting\n")
    assert last_error_line(log) == "still starting"
