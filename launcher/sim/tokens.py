"""Prompt counting and output text for the sim, with the real tokenizer.

vLLM counts a prompt with the Hugging Face tokenizer and renders chat prompts with
the model's Jinja chat template. Loading transformers costs seconds per start,
and tests start many sims, so when the tokenizer folder has a ``tokenizer.json``
we use the ``tokenizers`` library directly and render the template with Jinja the
way transformers does (same environment options, same variables, special tokens
not added twice). The test suite checks the counts against transformers.
"""

from __future__ import annotations

import json
import random
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

from loadgen.workload.tokenizer import TokenizerError, load_tokenizer, resolve_tokenizer_path

PIECE_TABLE_SIZE = 4096


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class ChatTemplateError(ValueError):
    """The messages cannot be rendered by the model's chat template."""


class SimTokenizer:
    """Counts prompts exactly as the real server would and supplies output pieces."""

    def __init__(self, name_or_path: str) -> None:
        path = resolve_tokenizer_path(name_or_path)
        self.name = name_or_path
        self.path = path
        config: dict[str, Any] = {}
        cfg_file = path / "tokenizer_config.json"
        if cfg_file.exists():
            try:
                config = json.loads(cfg_file.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise TokenizerError(f"cannot parse '{cfg_file}': {exc}") from None
        self._hf = None
        self._fast = None
        if (path / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            try:
                self._fast = Tokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as exc:  # the Rust error types are not importable
                raise TokenizerError(f"cannot load '{path / 'tokenizer.json'}': {exc}") from None
        else:
            self._hf = load_tokenizer(str(path))
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: use the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if template is None and (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        self._template = self._compile(template) if template else None
        self._special = {
            key: _token_text(config.get(key)) or ""
            for key in ("bos_token", "eos_token", "pad_token", "unk_token")
        }
        self.vocab_size = self._fast.get_vocab_size() if self._fast else len(self._hf)
        self.pieces = self._piece_table()

    @staticmethod
    def _compile(source: str) -> jinja2.Template:
        def raise_exception(message: str) -> None:
            raise ChatTemplateError(message)

        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )
        env.globals["raise_exception"] = raise_exception
        return env.from_string(source)

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None or (self._hf is not None and getattr(self._hf, "chat_template", None))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self._fast is not None:
            return self._fast.encode(text, add_special_tokens=add_special_tokens).ids
        return list(self._hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: list[int]) -> str:
        if self._fast is not None:
            return self._fast.decode(ids, skip_special_tokens=False)
        return self._hf.decode(ids)

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text the server would feed the model for these messages."""
        if self._template is None:
            if self._hf is not None and getattr(self._hf, "chat_template", None):
                return self._hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
            raise ChatTemplateError("this tokenizer has no chat template; use /v1/completions")
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt, tools=None, documents=None,
                **self._special,
            )
        except ChatTemplateError:
            raise
        except Exception as exc:  # a template error names the bad message field
            raise ChatTemplateError(f"chat template failed on these messages: {exc}") from None

    def chat_ids(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        # transformers tokenizes a rendered template without adding special tokens:
        # the template already wrote them.
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)

    def _piece_table(self) -> list[str]:
        """A few thousand ordinary word tokens (" the", " cat") whose concatenation
        re-tokenizes to the same ids, so output text and completion_tokens agree."""
        upper = min(self.vocab_size, 128000)
        rng = random.Random(1234)
        ids = list(range(3, upper))
        rng.shuffle(ids)
        pieces: list[str] = []
        for tid in ids:
            text = self.decode([tid])
            if len(text) < 3 or text[0] != " " or not text[1:].isascii() or not text[1:].isalpha():
                continue
            if self.encode(text, add_special_tokens=False) != [tid]:
                continue
            pieces.append(text)
            if len(pieces) >= PIECE_TABLE_SIZE:
                break
        if not pieces:  # an odd vocabulary: fall back to any decodable token
            pieces = [self.decode([t]) for t in ids[:PIECE_TABLE_SIZE]]
        return pieces
