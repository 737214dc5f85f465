"""Does the server count our prompts the way we built them?

Before the clock starts, a sample of prompts goes to vLLM's ``POST /tokenize``
(``{"model", "prompt"}`` for text, ``{"model", "messages", "add_generation_prompt":
true}`` for chat; the answer's ``count`` is the server's length). A disagreement
means client and server do not tokenize alike, and every "N-token" figure of the
run would be wrong, so the CLI stops. After the run, :func:`prompt_token_mismatches`
compares every request's built length with the server's ``usage.prompt_tokens``.

Through :mod:`loadgen.control`: a handful of blocking calls before the run, no event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadgen import control
from loadgen.connection import DEFAULT as DEFAULT_CONNECTION
from loadgen.connection import Connection
from loadgen.records import Prompt


@dataclass
class VerifyResult:
    """Outcome of a pre-run check. ``supported`` is False when the server has no ``/tokenize``."""

    supported: bool
    ok: bool
    checked: int = 0
    mismatches: list[tuple[int, int, int]] = field(default_factory=list)  # (prompt id, built, server)
    max_diff: int = 0
    message: str = ""


@dataclass(frozen=True)
class MismatchSummary:
    """Built vs. server-reported prompt lengths over a run's records."""

    compared: int
    mismatched: int
    max_abs_diff: int
    examples: tuple[tuple[int, int, int], ...] = ()  # (prompt id, built, server)

    @property
    def ok(self) -> bool:
        return self.mismatched == 0


def prompt_token_mismatches(records: Iterable[Any], examples: int = 5) -> MismatchSummary:
    """Compare each record's ``input_len`` with its ``server_prompt_tokens`` (when reported)."""
    compared = mismatched = worst = 0
    shown: list[tuple[int, int, int]] = []
    for rec in records:
        server = getattr(rec, "server_prompt_tokens", None)
        if server is None:
            continue
        compared += 1
        diff = server - rec.input_len
        if diff:
            mismatched += 1
            worst = max(worst, abs(diff))
            if len(shown) < examples:
                shown.append((rec.prompt_id, rec.input_len, server))
    return MismatchSummary(compared, mismatched, worst, tuple(shown))


def _root(base_url: str) -> str:
    """vLLM serves ``/tokenize`` at the root, not under ``/v1``."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def spread(prompts: Sequence[Prompt], sample: int | None) -> Sequence[Prompt]:
    """``sample`` prompts spread evenly over the set (all of them for None or 0)."""
    if sample is None or sample <= 0 or sample >= len(prompts):
        return prompts
    step = len(prompts) / sample
    return [prompts[int(i * step)] for i in range(sample)]


def _post(url: str, body: dict[str, Any], api_key: str | None, timeout_s: float,
          connection: Connection = DEFAULT_CONNECTION) -> tuple[int, Any]:
    resp = control.request(url, api_key=api_key, body=body, timeout_s=timeout_s, connection=connection,
                           read_limit=16 * 1024 * 1024)
    try:
        return resp.status, resp.json()
    except control.ControlError:
        return resp.status, resp.body.decode("utf-8", "replace")


def _error_text(payload: Any) -> str:
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(payload)[:200]


def _no_endpoint(status: int, payload: Any) -> bool:
    """404/405 from a router that lacks the route, as opposed to vLLM's 404 for a wrong model."""
    if status == 405:
        return True
    if status != 404:
        return False
    text = _error_text(payload).lower()
    return "model" not in text


def explain(mismatches: list[tuple[int, int, int]], checked: int, chat: bool) -> str:
    """Name the likely cause of a disagreement and the fix, from its shape."""
    diffs = [server - built for _id, built, server in mismatches]
    pid, built, server = mismatches[0]
    head = (
        f"prompt-length check failed: the server counts {server} tokens where loadgen built {built} "
        f"(prompt {pid}; {len(mismatches)} of {checked} sampled prompts differ, max difference {max(map(abs, diffs))})"
    )
    constant = len(set(diffs)) == 1 and len(mismatches) == checked
    if constant and chat:
        cause = (
            f"every chat prompt differs by {diffs[0]}: the server applies a different chat template "
            "(a --chat-template option, or another tokenizer_config.json)"
        )
    elif constant and abs(diffs[0]) == 1:
        cause = (
            "every prompt differs by exactly 1: client and server disagree about adding a BOS token "
            "(transformers 5 ignores add_bos_token; 4.x honours it)"
        )
    else:
        cause = (
            "the server's tokenizer splits text differently: a different tokenizer version or config "
            "(e.g. tokenizer_class: LlamaTokenizerFast in tokenizer_config.json makes transformers 5 rebuild "
            "DeepSeek's pre-tokenizer)"
        )
    fix = (
        "fix: give --tokenizer the exact tokenizer folder the server loads (same tokenizer.json and "
        "tokenizer_config.json, same transformers/tokenizers versions), or correct the server's config"
    )
    return f"{head}. Likely cause: {cause}. {fix}"


def verify_with_server(
    base_url: str,
    model: str,
    prompts: Sequence[Prompt],
    *,
    sample: int = 8,
    api_key: str | None = None,
    timeout_s: float = 10,
    connection: Connection = DEFAULT_CONNECTION,
) -> VerifyResult:
    """Ask the server to count a sample of prompts and compare with the built lengths."""
    url = _root(base_url) + "/tokenize"
    chosen = spread(prompts, sample)
    mismatches: list[tuple[int, int, int]] = []
    for prompt in chosen:
        if prompt.messages is not None:
            body: dict[str, Any] = {"model": model, "messages": prompt.messages, "add_generation_prompt": True}
        else:
            body = {"model": model, "prompt": prompt.text or ""}
        try:
            status, payload = _post(url, body, api_key, timeout_s, connection)
        except control.ControlError as exc:
            return VerifyResult(False, False, message=f"could not reach the server to check prompt lengths: {exc}")
        if status != 200:
            if _no_endpoint(status, payload):
                return VerifyResult(
                    False, True, message=f"server has no /tokenize (HTTP {status}); prompt lengths not pre-checked"
                )
            return VerifyResult(
                True,
                False,
                message=f"/tokenize answered HTTP {status}: {_error_text(payload)} (check --model and --api-key)",
            )
        count = payload.get("count") if isinstance(payload, dict) else None
        if not isinstance(count, int):
            tokens = payload.get("tokens") if isinstance(payload, dict) else None
            if not isinstance(tokens, list):
                return VerifyResult(True, False, message=f"/tokenize answer has no 'count': {str(payload)[:120]}")
            count = len(tokens)
        if count != prompt.input_len:
            mismatches.append((prompt.id, prompt.input_len, count))
    if not mismatches:
        return VerifyResult(
            True, True, checked=len(chosen), message=f"server agrees on all {len(chosen)} sampled prompt lengths"
        )
    chat = chosen[0].messages is not None
    max_diff = max(abs(s - b) for _i, b, s in mismatches)
    return VerifyResult(True, False, len(chosen), mismatches, max_diff, explain(mismatches, len(chosen), chat))
