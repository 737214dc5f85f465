"""Will the model fit, and how many tokens of KV cache will be left? Answered before loading.

The field report loaded all 163 shards of DeepSeek-R1 before SGLang stopped with
"Not enough memory. Please try to increase --mem-fraction-static": on 8 x 96 GiB
the default static fraction leaves a KV pool below zero. Every figure needed to
predict that is known up front (checkpoint size, model config, GPU memory, the
engine's own sizing rule), so this module replays each engine's rule as pure
arithmetic. Only ``gpu_memory_gib_from_nvidia_smi`` and the checkpoint readers
touch the outside world.

Sizing rules (per GPU, GiB):

* SGLang 0.4.x (``ModelRunner.profile_max_num_token``):
  ``rest = free_after_weights - free_at_init * (1 - mem_fraction_static)``; the KV
  pool is ``rest``; ``rest <= 0`` is the start-up failure. The smallest fraction
  that starts is therefore ``1 - free_after_weights / free_at_init``.
* vLLM (V1 profiling): ``kv = total * gpu_memory_utilization - weights - activation
  peak - non-torch memory``; it refuses to start when ``kv`` holds fewer tokens than
  one request of ``--max-model-len``.

KV bytes per token: MLA models (DeepSeek) cache one latent of ``kv_lora_rank +
qk_rope_head_dim`` per layer, shared by all heads, so it is NOT divided by TP;
other models cache K and V per KV head, split across TP ranks.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import LauncherError

GIB = 1 << 30

# Assumptions shared by the rules; each is printed with the plan so a reader can judge it.
CUDA_CONTEXT_GIB = 0.6  # CUDA context + NCCL buffers before anything is loaded
POST_LOAD_EXTRA_GIB = 0.5  # allocator slack and buffers created while loading weights
VLLM_NON_TORCH_GIB = 1.6  # CUDA context + NCCL + cuBLAS workspaces outside torch's allocator
SGLANG04_DEFAULT_MFS = ((16, 0.79), (8, 0.81), (4, 0.85), (2, 0.87), (1, 0.88))

# Tensors every TP rank holds whole (DeepSeek/V3 layout: low-rank input projections,
# norms, router); everything else is split 1/TP.
_REPLICATED_MARKERS = ("q_a_proj", "kv_a_proj_with_mqa", "norm", "mlp.gate.weight", "e_score_correction_bias")

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class MemoryInputError(LauncherError, ValueError):
    """The inputs cannot give a memory plan; the message names what is missing and how to supply it."""


@dataclass
class Weights:
    """Weight bytes as TP will place them."""

    total_bytes: int
    replicated_bytes: int = 0
    skipped_bytes: int = 0  # e.g. the MTP layer, not loaded without speculative decoding
    source: str = ""

    def per_gpu_bytes(self, tp: int) -> float:
        loaded = self.total_bytes - self.skipped_bytes
        return (loaded - self.replicated_bytes) / tp + self.replicated_bytes


@dataclass
class MemoryPlan:
    """The outcome of one engine's sizing rule on one GPU; every figure is per GPU unless named otherwise."""

    engine: str
    rule: str
    tp: int
    gpu_memory_gib: float
    context_len: int
    weights_gib_per_gpu: float
    kv_bytes_per_token: int
    fraction_flag: str
    fraction: float
    fraction_is_default: bool
    kv_pool_gib_per_gpu: float
    kv_tokens: int
    max_concurrency: float
    fails: bool
    reason: str
    min_fraction: float | None
    assumptions: list[str] = field(default_factory=list)
    pp: int = 1  # pipeline stages: each GPU holds 1/pp of the layers (weights and KV)
    nodes: int = 1

    @property
    def ok(self) -> bool:
        return not self.fails

    fits = ok

    @property
    def verdict(self) -> str:
        return "fails" if self.fails else "ok"

    @property
    def min_fraction_to_start(self) -> float | None:
        """The smallest fraction (rounded up to 0.001) that starts, or None when none does."""
        if self.min_fraction is None or self.min_fraction >= 1:
            return None
        return math.ceil(self.min_fraction * 1000 - 1e-9) / 1000

    def describe(self) -> str:
        lines = [
            f"memory plan ({self.rule}): TP {self.tp}" + (f" x PP {self.pp}" if self.pp > 1 else "")
            + (f" over {self.nodes} nodes" if self.nodes > 1 else "")
            + f" on GPUs of {self.gpu_memory_gib:.2f} GiB, context {self.context_len}",
            f"  weights per GPU      {self.weights_gib_per_gpu:8.2f} GiB",
            f"  KV cache per token   {self.kv_bytes_per_token:8d} B  ({self.kv_bytes_per_token / 1024:.2f} KiB)",
            f"  {self.fraction_flag} {self.fraction:.2f}" + (" (engine default)" if self.fraction_is_default else ""),
            f"  KV pool per GPU      {self.kv_pool_gib_per_gpu:8.2f} GiB",
            f"  KV tokens            {self.kv_tokens:8d}",
            f"  max concurrency at {self.context_len} tokens: {self.max_concurrency:.2f}",
            f"  verdict: {self.verdict.upper()} — {self.reason}",
        ]
        smallest = self.min_fraction_to_start
        if smallest is not None:
            lines.append(f"  smallest {self.fraction_flag} that starts: {smallest:.3f}")
        elif self.min_fraction is not None:
            lines.append(f"  no {self.fraction_flag} below 1.0 starts: the weights leave too little memory on this GPU")
        if self.assumptions:
            lines.append("  assumptions: " + "; ".join(self.assumptions))
        return "\n".join(lines)


# ---------------------------------------------------------------- model facts


def kv_bytes_per_token(config: dict, *, kv_dtype_bytes: int = 2, tp: int = 1, mtp: bool = False) -> int:
    """KV-cache bytes one token occupies on ONE GPU."""
    try:
        layers = int(config["num_hidden_layers"])
    except (KeyError, TypeError, ValueError):
        raise MemoryInputError("model config has no num_hidden_layers; pass the checkpoint's config.json") from None
    if mtp:
        layers += int(config.get("num_nextn_predict_layers", 0) or 0)
    if config.get("kv_lora_rank"):
        per_layer = int(config["kv_lora_rank"]) + int(config.get("qk_rope_head_dim", 0))
        return per_layer * layers * kv_dtype_bytes
    heads = int(config.get("num_attention_heads", 0) or 0)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or (int(config.get("hidden_size", 0)) // max(heads, 1)))
    if not kv_heads or not head_dim:
        raise MemoryInputError("model config lacks attention head sizes; pass the checkpoint's config.json")
    kv_heads_per_gpu = max(1, math.ceil(kv_heads / tp))
    return 2 * kv_heads_per_gpu * head_dim * layers * kv_dtype_bytes


def kv_dtype_bytes_for(kv_cache_dtype: str | None, config: dict | None = None) -> int:
    """Bytes per KV element: 1 for FP8 caches, else the model's activation dtype (bf16/fp16: 2, fp32: 4)."""
    if kv_cache_dtype and kv_cache_dtype.lower().startswith("fp8"):
        return 1
    dtype = str((config or {}).get("torch_dtype", "bfloat16"))
    return 4 if dtype in ("float32", "float") else 2


def is_replicated(tensor_name: str) -> bool:
    return any(m in tensor_name for m in _REPLICATED_MARKERS)


def _layer_index(tensor_name: str) -> int | None:
    parts = tensor_name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one .safetensors file (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise MemoryInputError(f"{path} is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 1024 * 1024:
            raise MemoryInputError(f"{path}: header length {n} is implausible; the file is damaged")
        try:
            return json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MemoryInputError(f"{path}: safetensors header is not valid JSON; the file is damaged") from None


def weights_from_checkpoint(checkpoint_dir: str | Path, config: dict | None = None, *, mtp: bool = False) -> Weights:
    """Weight bytes from the safetensors headers: total, the part every TP rank holds whole, and the MTP layer."""
    root = Path(checkpoint_dir)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise MemoryInputError(f"no *.safetensors files in {root}; give the checkpoint folder or --weights-gib")
    layers = int((config or {}).get("num_hidden_layers", 0) or 0)
    total = replicated = skipped = 0
    for f in files:
        header = read_safetensors_header(f)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            size = int(end) - int(begin)
            total += size
            layer = _layer_index(name)
            if not mtp and layers and layer is not None and layer >= layers:
                skipped += size
            elif is_replicated(name):
                replicated += size
    return Weights(total, replicated, skipped, source=f"safetensors headers of {len(files)} files in {root}")


def read_config(checkpoint_dir: str | Path) -> dict:
    path = Path(checkpoint_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except OSError:
        raise MemoryInputError(f"no config.json in {checkpoint_dir}; the memory plan needs the model config") from None
    except json.JSONDecodeError as exc:
        raise MemoryInputError(f"{path} is not valid JSON (line {exc.lineno}); the checkpoint is damaged") from None


def known_model(name: str) -> dict | None:
    """Shipped figures for a well-known model (config and checkpoint sizes), matched by name or path."""
    from launcher.engines.flags import data_json

    data = data_json("model-deepseek-r1.json")
    low = name.lower()
    if any(m.lower() in low for m in data["match"]):
        return data
    return None


# ---------------------------------------------------------------- sizing rules


def sglang_default_mem_fraction(tp: int) -> float:
    """SGLang 0.4.x's default --mem-fraction-static, which shrinks as TP grows (more NCCL buffers)."""
    for min_tp, frac in SGLANG04_DEFAULT_MFS:
        if tp >= min_tp:
            return frac
    return SGLANG04_DEFAULT_MFS[-1][1]


def vllm_activation_peak_gib(max_num_batched_tokens: int, hidden_size: int = 7168) -> float:
    """Torch activation peak of vLLM's profiling run.

    For DeepSeek-R1 (hidden 7168) a straight line through 2.5 GiB at 8192 and
    4.0 GiB at 16384 batched tokens (the figures in the engines reference), scaled
    by hidden size for other models. It is an estimate, and it is printed as one.
    """
    return (1.0 + 1.5 * max_num_batched_tokens / 8192) * hidden_size / 7168


def _sglang04(weights_gib: float, gpu_gib: float, mfs: float, bpt: int, context_len: int) -> tuple[float, int, bool, str, float]:
    free_at_init = gpu_gib - CUDA_CONTEXT_GIB
    free_after = free_at_init - weights_gib
    rest = free_after - free_at_init * (1 - mfs)
    tokens = max(0, int(rest * GIB // bpt)) if rest > 0 else 0
    min_frac = 1 - free_after / free_at_init
    if rest <= 0:
        reason = (
            f"KV pool {rest:.2f} GiB < 0: SGLang stops after loading the weights with "
            "'Not enough memory. Please try to increase --mem-fraction-static'"
        )
        return rest, 0, True, reason, min_frac
    if tokens < context_len:
        reason = f"starts, but {tokens} KV tokens cannot hold one request of {context_len} tokens"
        return rest, tokens, False, reason, min_frac
    headroom = free_at_init * (1 - mfs)
    return rest, tokens, False, f"starts; {headroom:.2f} GiB left for activations and CUDA graphs", min_frac


def _vllm(weights_gib: float, gpu_gib: float, util: float, bpt: int, context_len: int, act_gib: float) -> tuple[float, int, bool, str, float]:
    kv = gpu_gib * util - weights_gib - act_gib - VLLM_NON_TORCH_GIB
    tokens = max(0, int(kv * GIB // bpt)) if kv > 0 else 0
    need = weights_gib + act_gib + VLLM_NON_TORCH_GIB + context_len * bpt / GIB
    min_frac = need / gpu_gib
    if kv <= 0:
        return kv, 0, True, f"KV cache {kv:.2f} GiB <= 0: vLLM stops with 'No available memory for the cache blocks'", min_frac
    if tokens < context_len:
        reason = (
            f"{tokens} KV tokens < max model len {context_len}: vLLM refuses to start "
            "(max seq len larger than the KV cache); lower --max-model-len or raise --gpu-memory-utilization"
        )
        return kv, tokens, True, reason, min_frac
    return kv, tokens, False, "starts", min_frac


def plan_memory(
    *,
    engine: str,
    checkpoint_dir: str | None = None,
    config: dict | None = None,
    weights_bytes: int | None = None,
    tp: int | None = None,
    gpu_memory_gib: float | None = None,
    context_len: int | None = None,
    mem_fraction: float | None = None,
    kv_dtype_bytes: int | None = None,
    version: str | None = None,
    model: str | None = None,
    preset: str | None = None,
    gpus: int | None = None,
    replicated_bytes: int = 0,
    weights_gib_per_gpu: float | None = None,
    max_num_batched_tokens: int | None = None,
    mtp: bool = False,
    pp: int = 1,
    nodes: int = 1,
) -> MemoryPlan:
    """Replay the engine's KV sizing rule for one deployment.

    Weights come from (first found): ``weights_gib_per_gpu``; the checkpoint's
    safetensors headers; ``weights_bytes``; the shipped figures of a known model
    named by ``model``. ``mem_fraction`` is ``--mem-fraction-static`` (SGLang) or
    ``--gpu-memory-utilization`` (vLLM); None means the engine's default.
    With ``preset``, TP, context length, fraction, KV dtype and batch tokens come
    from the preset's flags for that engine unless given; ``gpus`` (a count) is the
    TP size when nothing else sets it; ``model`` may be the checkpoint folder; GPU
    memory defaults to the smallest GPU nvidia-smi reports. ``pp`` pipeline
    stages split the layers, so each GPU holds 1/pp of the weights and of every
    token's KV (``nodes`` is only reported).
    """
    assumptions: list[str] = []
    preset_model: str | None = None
    if model and checkpoint_dir is None and Path(model).is_dir():
        checkpoint_dir = model
    if preset:
        from launcher.plan import build_plan

        implied = memory_kwargs_from_plan(build_plan(engine, version=version, preset=preset, host_facts=("", "")))
        tp = tp or implied["tp"]
        context_len = context_len or implied["context_len"]
        mem_fraction = mem_fraction if mem_fraction is not None else implied["mem_fraction"]
        kv_dtype_bytes = kv_dtype_bytes or implied["kv_dtype_bytes"]
        max_num_batched_tokens = max_num_batched_tokens or implied["max_num_batched_tokens"]
        mtp = mtp or implied["mtp"]
        version = version or implied["version"]
        preset_model = implied["model"]
    if tp is None:
        tp = gpus or 1
        if gpus is None:
            assumptions.append("TP 1 assumed (no --gpus / tensor parallel size given)")
    if gpu_memory_gib is None:
        found = gpu_memory_gib_from_nvidia_smi()
        gpu_memory_gib = min(found) if found else None
    if engine not in ("vllm", "sglang"):
        raise MemoryInputError(f"no memory rule for engine {engine!r} (only vllm and sglang load weights on GPUs)")
    if tp < 1 or pp < 1:
        raise MemoryInputError(f"tensor and pipeline parallel sizes must be >= 1, got TP {tp}, PP {pp}")
    if not gpu_memory_gib or gpu_memory_gib <= 0:
        raise MemoryInputError("GPU memory unknown: no nvidia-smi here; pass --gpu-memory GiB (e.g. 95.58 for H20-96GB)")
    if mem_fraction is not None and not (0 < mem_fraction <= 1):
        raise MemoryInputError(f"memory fraction {mem_fraction} must be in (0, 1]")
    known = next((k for k in (known_model(n) for n in (model, checkpoint_dir, preset_model) if n) if k), None)
    if config is None and checkpoint_dir and (Path(checkpoint_dir) / "config.json").is_file():
        config = read_config(checkpoint_dir)
    if config is None and known:
        config = known["config"]
        assumptions.append(f"config of {known['name']} from shipped figures")
    if config is None:
        raise MemoryInputError("no model config: give the checkpoint folder (with config.json) or a known model name")

    if weights_gib_per_gpu is None:
        if checkpoint_dir and any(Path(checkpoint_dir).glob("*.safetensors")):
            w = weights_from_checkpoint(checkpoint_dir, config, mtp=mtp)
        elif weights_bytes is not None:
            w = Weights(int(weights_bytes), int(replicated_bytes), 0, source="given total")
        elif known:
            ck = known["checkpoint"]
            w = Weights(ck["total_bytes"], ck["replicated_bytes"], 0 if mtp else ck["mtp_bytes"], source=f"shipped figures of {known['name']}")
        else:
            raise MemoryInputError("weights unknown: give the checkpoint folder or --weights-gib")
        weights_gib_per_gpu = w.per_gpu_bytes(tp) / pp / GIB + POST_LOAD_EXTRA_GIB
        assumptions.append(f"weights from {w.source}, +{POST_LOAD_EXTRA_GIB} GiB allocated while loading")
    ctx = int(context_len or config.get("max_position_embeddings") or 0)
    if ctx <= 0:
        raise MemoryInputError("context length unknown: pass it (--max-model-len / --context-length)")
    if kv_dtype_bytes is None:
        kv_dtype_bytes = kv_dtype_bytes_for(None, config)
    bpt = kv_bytes_per_token(config, kv_dtype_bytes=kv_dtype_bytes, tp=tp, mtp=mtp)
    if pp > 1:
        layers = int(config["num_hidden_layers"])
        bpt = bpt * math.ceil(layers / pp) // layers
        assumptions.append(f"PP {pp}: a GPU holds {math.ceil(layers / pp)} of {layers} layers (weights split evenly)")

    if engine == "sglang":
        is_default = mem_fraction is None
        frac = sglang_default_mem_fraction(tp) if is_default else float(mem_fraction)  # type: ignore[arg-type]
        if is_default and version and not version.startswith("0.4"):
            assumptions.append(f"SGLang {version} computes its default fraction differently; used the 0.4.x default {frac}")
        assumptions.append(f"{CUDA_CONTEXT_GIB} GiB CUDA context before loading")
        pool, tokens, fails, reason, min_frac = _sglang04(weights_gib_per_gpu, gpu_memory_gib, frac, bpt, ctx)
        rule, flag = "SGLang 0.4.x profile_max_num_token", "--mem-fraction-static"
    else:
        is_default = mem_fraction is None
        frac = _vllm_default_util(version) if is_default else float(mem_fraction)  # type: ignore[arg-type]
        mbt = max_num_batched_tokens or 8192
        if max_num_batched_tokens is None:
            assumptions.append("--max-num-batched-tokens 8192 assumed")
        act = vllm_activation_peak_gib(mbt, int(config.get("hidden_size") or 7168))
        assumptions.append(f"activation peak {act:.2f} GiB (estimate), non-torch {VLLM_NON_TORCH_GIB} GiB")
        pool, tokens, fails, reason, min_frac = _vllm(weights_gib_per_gpu, gpu_memory_gib, frac, bpt, ctx, act)
        rule, flag = "vLLM profile run", "--gpu-memory-utilization"
    return MemoryPlan(
        engine=engine,
        rule=rule,
        tp=tp,
        gpu_memory_gib=gpu_memory_gib,
        context_len=ctx,
        weights_gib_per_gpu=weights_gib_per_gpu,
        kv_bytes_per_token=bpt,
        fraction_flag=flag,
        fraction=frac,
        fraction_is_default=is_default,
        kv_pool_gib_per_gpu=pool,
        kv_tokens=tokens,
        max_concurrency=tokens / ctx,
        fails=fails,
        reason=reason,
        min_fraction=min_frac,
        assumptions=assumptions,
        pp=pp,
        nodes=nodes,
    )


def _vllm_default_util(version: str | None) -> float:
    """--gpu-memory-utilization's default in that release's flag data (0.9 in 0.8.2, 0.92 in 0.33)."""
    from launcher.engines.flags import load_flagset
    from launcher.engines.versions import resolve_version

    try:
        data_version = resolve_version("vllm", version or "0.33.0").data
        flag = load_flagset("vllm", data_version).flags["--gpu-memory-utilization"]
        return float(flag.default)
    except Exception:  # noqa: BLE001 - a default is a default; the data file may lack it
        return 0.9


def memory_kwargs_from_plan(plan: Any) -> dict[str, Any]:
    """The plan_memory() arguments a launch plan implies (TP, context, fraction, KV dtype, batch tokens).

    GPU memory and the checkpoint location are the caller's to add.
    """
    o = plan.options
    tp = o.get("--tensor-parallel-size") or o.get("--tp-size") or 1
    if plan.engine == "vllm":
        ctx = o.get("--max-model-len")
        frac = o.get("--gpu-memory-utilization")
        mbt = o.get("--max-num-batched-tokens")
        mtp = bool(o.get("--speculative-config") or o.get("--num-speculative-tokens"))
    else:
        ctx = o.get("--context-length")
        frac = o.get("--mem-fraction-static")
        mbt = None
        mtp = bool(o.get("--speculative-algorithm"))
    return {
        "engine": plan.engine,
        "version": plan.data_version or plan.version,
        "model": plan.model,
        "tp": int(str(tp)),
        "context_len": _human_int(ctx) if ctx not in (None, "", "auto", "-1") else None,
        "mem_fraction": float(frac) if frac not in (None, "") else None,
        "kv_dtype_bytes": 1 if str(o.get("--kv-cache-dtype", "")).startswith("fp8") else 2,
        "max_num_batched_tokens": _human_int(mbt) if mbt else None,
        "mtp": mtp,
    }


def _human_int(text: Any) -> int:
    s = str(text).strip().lower()
    mult = {"k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}.get(s[-1:], 1)
    if mult != 1:
        s = s[:-1]
    return int(float(s) * mult)


def parse_nvidia_smi_memory(text: str) -> list[float]:
    """GiB per GPU from ``nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits`` (MiB lines)."""
    out = []
    for line in text.splitlines():
        line = line.strip().split(",")[0].strip()
        if line:
            try:
                out.append(float(line) / 1024)
            except ValueError:
                continue
    return out


def gpu_memory_gib_from_nvidia_smi() -> list[float] | None:
    """Total memory of each GPU in GiB, or None when there is no nvidia-smi or it fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        done = subprocess.run(
            [exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return parse_nvidia_smi_memory(done.stdout) or None
