"""Memory plans: the field report's SGLang failure and the reference figures, predicted before loading.

Expected figures are the engines' sizing rules replayed independently for
8 x H20-96GB (97,871 MiB) and 8 x H200-141GB (143,771 MiB) in the engines reference.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from launcher.memory import (
    GIB,
    MemoryInputError,
    gpu_memory_gib_from_nvidia_smi,
    kv_bytes_per_token,
    memory_kwargs_from_plan,
    parse_nvidia_smi_memory,
    plan_memory,
    weights_from_checkpoint,
)
from launcher.plan import build_plan

H20 = 97871 / 1024  # GiB
H200 = 143771 / 1024
R1 = dict(model="deepseek-r1", tp=8)


def close(a: float, b: float, rel: float = 0.002) -> bool:
    return abs(a - b) <= rel * abs(b)


def test_sglang_default_fraction_fails_on_8x_h20_and_names_the_smallest_that_starts():
    m = plan_memory(engine="sglang", version="0.4.5", gpu_memory_gib=H20, context_len=65536, **R1)
    assert m.fraction == 0.81 and m.fraction_is_default
    assert m.fails and m.kv_pool_gib_per_gpu < 0 and m.kv_tokens == 0
    assert abs(m.kv_pool_gib_per_gpu - (-2.86)) < 0.02
    assert abs(m.min_fraction - 0.8401) < 0.001
    assert 0.84 <= m.min_fraction_to_start <= 0.845
    assert "Not enough memory" in m.reason
    text = m.describe()
    assert "FAILS" in text and "--mem-fraction-static" in text and "0.841" in text


@pytest.mark.parametrize("frac, tokens, pool", [(0.90, 86888, 5.69), (0.85, 14327, 0.94)])
def test_sglang_on_8x_h20_starts_with_a_higher_fraction(frac, tokens, pool):
    m = plan_memory(engine="sglang", gpu_memory_gib=H20, context_len=65536, mem_fraction=frac, **R1)
    assert not m.fails and m.ok
    assert close(m.kv_tokens, tokens, 0.003)
    assert abs(m.kv_pool_gib_per_gpu - pool) < 0.02


@pytest.mark.parametrize("frac, tokens", [(0.81, 511050), (0.85, 596496), (0.90, 703303)])
def test_sglang_on_8x_h200_starts_even_with_the_default(frac, tokens):
    m = plan_memory(engine="sglang", gpu_memory_gib=H200, context_len=65536, mem_fraction=frac, **R1)
    assert not m.fails and close(m.kv_tokens, tokens)
    assert abs(m.min_fraction - 0.5708) < 0.001


@pytest.mark.parametrize(
    "gpu, util, mbt, tokens",
    [(H20, 0.95, 16384, 82592), (H20, 0.90, 8192, 32492), (H200, 0.95, 16384, 733252), (H200, 0.90, 8192, 648907)],
)
def test_vllm_kv_tokens_match_the_reference(gpu, util, mbt, tokens):
    m = plan_memory(engine="vllm", gpu_memory_gib=gpu, context_len=4096, mem_fraction=util, max_num_batched_tokens=mbt, **R1)
    assert not m.fails and close(m.kv_tokens, tokens)
    assert close(m.max_concurrency, tokens / 4096)


def test_vllm_refuses_when_one_request_does_not_fit():
    m = plan_memory(engine="vllm", gpu_memory_gib=H20, context_len=163840, mem_fraction=0.90, max_num_batched_tokens=8192, **R1)
    assert m.fails and "max model len" in m.reason
    m = plan_memory(engine="vllm", gpu_memory_gib=H20, context_len=4096, mem_fraction=0.85, max_num_batched_tokens=8192, **R1)
    assert m.fails and m.kv_tokens == 0


def test_mla_kv_bytes_per_token_are_not_divided_by_tp():
    cfg = {"num_hidden_layers": 61, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "num_nextn_predict_layers": 1}
    assert kv_bytes_per_token(cfg, kv_dtype_bytes=2, tp=1) == 70272
    assert kv_bytes_per_token(cfg, kv_dtype_bytes=2, tp=8) == 70272
    assert kv_bytes_per_token(cfg, kv_dtype_bytes=1, tp=8) == 35136
    assert kv_bytes_per_token(cfg, kv_dtype_bytes=2, tp=8, mtp=True) == 71424


def test_gqa_kv_bytes_per_token_split_across_tp():
    # 32 layers, 8 KV heads of 128: K and V, bf16 → 2*8*128*32*2 = 131072 B on one GPU.
    cfg = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}
    assert kv_bytes_per_token(cfg, tp=1) == 131072
    assert kv_bytes_per_token(cfg, tp=4) == 131072 // 4
    assert kv_bytes_per_token(cfg, tp=16) == 131072 // 8  # a KV head cannot be split further


def _write_checkpoint(root, layers: int = 2) -> dict[str, int]:
    """A miniature DeepSeek-style checkpoint: real safetensors files; returns byte counts by class."""
    sizes = {"replicated": 0, "sharded": 0, "mtp": 0}
    tensors_a, tensors_b = {}, {}
    for layer in range(layers + 1):  # the last one plays the MTP layer
        group = tensors_a if layer < 1 else tensors_b
        t = {
            f"model.layers.{layer}.self_attn.q_a_proj.weight": np.zeros((16, 32), np.float32),  # replicated
            f"model.layers.{layer}.input_layernorm.weight": np.zeros((32,), np.float32),  # replicated
            f"model.layers.{layer}.mlp.experts.0.up_proj.weight": np.zeros((64, 32), np.uint8),  # sharded (fp8-like)
            f"model.layers.{layer}.self_attn.o_proj.weight": np.zeros((32, 32), np.float16),  # sharded
        }
        for name, arr in t.items():
            key = "mtp" if layer == layers else ("replicated" if ("q_a_proj" in name or "norm" in name) else "sharded")
            sizes[key] += arr.nbytes
        group.update(t)
    embed = np.zeros((100, 32), np.float16)
    tensors_a["model.embed_tokens.weight"] = embed
    sizes["sharded"] += embed.nbytes
    save_file(tensors_a, str(root / "model-00001-of-00002.safetensors"))
    save_file(tensors_b, str(root / "model-00002-of-00002.safetensors"))
    (root / "config.json").write_text(json.dumps({
        "num_hidden_layers": layers, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "max_position_embeddings": 4096,
        "num_nextn_predict_layers": 1, "torch_dtype": "bfloat16",
    }))
    return sizes


def test_weights_from_a_real_checkpoint(tmp_path):
    sizes = _write_checkpoint(tmp_path)
    w = weights_from_checkpoint(tmp_path, json.loads((tmp_path / "config.json").read_text()))
    assert w.total_bytes == sum(sizes.values())
    assert w.skipped_bytes == sizes["mtp"] and w.replicated_bytes == sizes["replicated"]
    assert w.per_gpu_bytes(4) == sizes["sharded"] / 4 + sizes["replicated"]
    m = plan_memory(engine="sglang", checkpoint_dir=str(tmp_path), tp=4, gpu_memory_gib=16, context_len=None, mem_fraction=0.9)
    assert m.context_len == 4096  # from max_position_embeddings
    assert m.kv_bytes_per_token == (16 + 8) * 2 * 2
    expected_weights = (sizes["sharded"] / 4 + sizes["replicated"]) / GIB + 0.5
    assert abs(m.weights_gib_per_gpu - expected_weights) < 1e-9
    assert not m.fails


def test_damaged_shard_header_is_named(tmp_path):
    _write_checkpoint(tmp_path)
    bad = tmp_path / "model-00002-of-00002.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(MemoryInputError, match="model-00002-of-00002.safetensors"):
        weights_from_checkpoint(tmp_path)


def test_memory_inputs_follow_the_plan_flags():
    plan = build_plan("vllm", version="0.8.2", preset="deepseek-r1-fp8-tp8-h20", host_facts=("", ""))
    kw = memory_kwargs_from_plan(plan)
    assert kw == {"engine": "vllm", "version": "0.8.2", "model": "/mnt/models/DeepSeek-R1", "tp": 8,
                  "context_len": 4096, "mem_fraction": 0.95, "kv_dtype_bytes": 2,
                  "max_num_batched_tokens": 16384, "mtp": False}
    m = plan_memory(gpu_memory_gib=H20, **kw)
    assert not m.fails and close(m.kv_tokens, 82592)
    # The same through the preset argument (what `loadgen-launch check --preset` passes).
    m2 = plan_memory(engine="sglang", preset="deepseek-r1-fp8-tp8-h20", gpu_memory_gib=H20)
    assert m2.fraction == 0.90 and m2.context_len == 65536 and not m2.fails


def test_plain_tp8_sglang_as_first_tried_in_the_field_report_fails():
    plan = build_plan("sglang", version="0.4.5", model="/mnt/models/DeepSeek-R1", extra_args=["--tp", "8", "--trust-remote-code"], host_facts=("", ""))
    kw = memory_kwargs_from_plan(plan)
    assert kw["mem_fraction"] is None and kw["tp"] == 8
    m = plan_memory(gpu_memory_gib=H20, **kw)
    assert m.fails and m.context_len == 163840


def test_missing_inputs_are_one_line_errors(tmp_path):
    if shutil.which("nvidia-smi") is None:
        with pytest.raises(MemoryInputError, match="--gpu-memory"):
            plan_memory(engine="sglang", context_len=4096, **R1)
    with pytest.raises(MemoryInputError, match="no model config"):
        plan_memory(engine="vllm", tp=1, gpu_memory_gib=80, context_len=4096, model="my-private-model")
    with pytest.raises(MemoryInputError, match="no memory rule"):
        plan_memory(engine="sim", gpu_memory_gib=80, context_len=4096, **R1)
    with pytest.raises(MemoryInputError, match="must be in"):
        plan_memory(engine="sglang", gpu_memory_gib=80, context_len=4096, mem_fraction=1.5, **R1)


def test_nvidia_smi_output():
    assert parse_nvidia_smi_memory("97871\n97871\n") == [97871 / 1024] * 2
    assert parse_nvidia_smi_memory("") == []
    found = gpu_memory_gib_from_nvidia_smi()
    assert found is None if shutil.which("nvidia-smi") is None else all(g > 0 for g in found)
