"""Chat templates rendered the way transformers renders them, without importing it.

A chat prompt's length is the length of the rendered template, so the rendering must
match the server's character for character. vLLM renders with transformers'
``apply_chat_template``; this module reproduces what that does (transformers 5.x):
a sandboxed Jinja environment with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension and a pass-through ``{% generation %}`` tag, the globals
``raise_exception``, ``strftime_now``, ``dict`` and ``namespace``, a ``tojson`` that
does not escape HTML, messages with ``None``-valued keys dropped and reasoning fields
aliased, and the tokenizer's named special tokens (``bos_token``, ...) as variables.
Importing transformers costs ~1.4 s and ~180 MB; this costs milliseconds.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils

from loadgen.errors import LoadgenError

# The names a message's reasoning may come under; templates read the first.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(LoadgenError, ValueError):
    """The messages cannot be rendered by the chat template (the message says why)."""


class _Generation(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks;
    for a prompt it renders its body unchanged (templates that use it must still parse)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's own filter escapes HTML characters, which changes the prompt.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Dict:
    """``dict(...)`` for templates, without attribute access to the type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore names (no reach into Python internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja2.utils.Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore names on a namespace: {name!r}")


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (cached: compiling costs far more than rendering)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc}") from None


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Messages as transformers hands them to the template: keys with ``None`` dropped
    (many templates render a literal ``None`` otherwise), reasoning under every name."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatTemplateError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    out = []
    for message in messages:
        if not isinstance(message, dict):
            raise ChatTemplateError(f"each message must be an object, got {type(message).__name__}")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def render(
    source: str,
    messages: Any,
    special_tokens: dict[str, str],
    *,
    add_generation_prompt: bool = False,
    tools: list[dict[str, Any]] | None = None,
    documents: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> str:
    """The prompt text for ``messages`` (``apply_chat_template(..., tokenize=False)``)."""
    template = compile_template(source)
    variables = {**special_tokens, **kwargs}  # caller's variables win, as in transformers
    try:
        return template.render(
            messages=normalize_messages(messages), tools=tools, documents=documents,
            add_generation_prompt=add_generation_prompt, **variables,
        )
    except ChatTemplateError:
        raise
    except Exception as exc:  # template errors come in many types; one line names the cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ChatTemplateError(f"chat template failed on these messages: {first}") from None
