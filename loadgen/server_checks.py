"""The server checks before a run: reachable, which model, streaming really is SSE, the context window.

Everything that can fail cheaply is checked before the first prompt is built:
options (:mod:`loadgen.config`), the output folder, the server, the tokenizer. Each
failure is a :class:`PreflightError` with one line naming the problem and the fix; what
the checks learn (model, server version, context window, recount state) travels in a
:class:`Preflight` to every point.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen import control
from loadgen import results as results_mod
from loadgen.client import ClientError, Target, check_stream
from loadgen.config import RunConfig
from loadgen.errors import LoadgenError, is_transient
from loadgen.prefix_cache import run_salt
from loadgen.records import Prompt
from loadgen.workload.cache import readable_source
from loadgen.workload.errors import WorkloadError
from loadgen.workload.recount import Recount
from loadgen.workload.tokenizer import TokenizerError, resolve_tokenizer_path
from loadgen.workload.trace_prompts import TraceSet
from loadgen.workload.traces import Trace, read_trace


class PreflightError(LoadgenError, RuntimeError):
    """A check before the run failed; the message is one line with the fix."""

    kind = "preflight"


@dataclass
class Preflight:
    """What the checks learnt about the server and the client side."""

    model: str
    tokenizer_id: str
    server_version: str | None
    output_dir: Path
    max_model_len: int | None = None
    verification: dict[str, Any] | None = None  # set by verify_prompts
    server: dict[str, Any] | None = None  # what /version states beyond the version (sim: time_scale)
    local_check: dict[str, Any] | None = None  # the set's re-count by the tokenizer, when built before the run
    recount: Recount | None = None  # the re-count of a set built without its tokenizer
    cache_salt: str | None = None  # this run's --cache-salt
    cache_reset: dict[str, Any] | None = None  # the last --reset-prefix-cache outcome (loadgen.prefix_cache.reset)
    trace: TraceSet | None = None  # a trace replay's prompts and release times
    warm_prompts: list[Prompt] | None = None  # --warmup's own prompts (a random set: built beside the measured ones)
    trace_file: Trace | None = None  # read and checked before the server is asked anything

    def point_verification(self) -> dict[str, Any] | None:
        """The prompt checks a point's result records: the server's (``verify_prompts``)
        and the tokenizer's re-count of a built set (``local``) — done before the run, or
        beside it and waited for now (the point's clock has stopped)."""
        local = self.recount.verdict().as_dict() if self.recount is not None else self.local_check
        if local is None:
            return self.verification
        return {**(self.verification or {}), "local": local}

    def check_recount(self) -> None:
        """After a point is written: stop the sweep if the background re-count disagreed."""
        if self.recount is not None and self.recount.verdict().mismatched:
            raise PreflightError(self.recount.verdict().message())


# ---------------------------------------------------------------- control-path HTTP


def server_version(cfg: RunConfig) -> str | None:
    """``/version`` (vLLM, SGLang) when it answers; recorded in the result, never required."""
    return server_facts(cfg)[0]


def server_facts(cfg: RunConfig) -> tuple[str | None, dict[str, Any]]:
    """``/version``'s version string and the other facts it states (sim: engine, profile,
    ``time_scale``), which the result keeps in its ``server`` section."""
    try:
        resp = control.request(f"{cfg.target.base_url}/version", api_key=cfg.target.api_key, timeout_s=3.0, read_limit=65536,
                               connection=cfg.connection())
    except control.ControlError:
        return None, {}
    if resp.status != 200:
        return None, {}
    try:
        obj = json.loads(resp.body)
    except ValueError:
        return resp.body[:100].decode("utf-8", "replace").strip() or None, {}
    if not isinstance(obj, dict):
        return str(obj), {}
    facts = {k: v for k, v in obj.items() if k != "version" and isinstance(v, str | int | float | bool)}
    return str(obj.get("version", obj)), facts


def probe_stream(cfg: RunConfig, model: str, salt: str | None = None) -> None:
    """One tiny real streaming request; fails now if the answer is not an SSE stream."""

    prompt = (
        Prompt(id=-1, input_len=1, output_len=2, messages=[{"role": "user", "content": "hello"}])
        if cfg.chat else Prompt(id=-1, input_len=1, output_len=2, text="hello")
    )
    # A server that fails a few requests on purpose (or by load) should not stop a
    # benchmark from starting: transient kinds get two more tries, the rest fail now.
    for attempt in range(3):
        try:
            check_stream(stream_target(cfg, model, salt), prompt)
            return
        except ClientError as exc:
            if not is_transient(exc.kind) or attempt == 2:
                raise PreflightError(str(exc)) from None
            time.sleep(0.2 * (attempt + 1))


def stream_target(cfg: RunConfig, model: str, salt: str | None = None) -> Target:
    t = cfg.target
    extra_body = t.body_extra()
    if salt and t.salt_mode == "body":
        extra_body = {"cache_salt": salt, **(extra_body or {})}
    return Target(
        base_url=t.base_url,
        backend=t.backend,
        model=model,
        endpoint=t.endpoint,
        api_key=t.api_key,
        ignore_eos=cfg.effective_ignore_eos,
        extra_body=extra_body,
        timeout_s=t.timeout_s,
        save_text=cfg.output.save_text,
        connection=t.connection(),
    )


# ---------------------------------------------------------------- pre-flight


def check_files(cfg: RunConfig) -> None:
    """The files the options name exist and load (before anything is created)."""

    path = cfg.workload.dataset_path
    if path and not readable_source(path):
        raise PreflightError(f"--dataset-path '{path}' is not a readable file or pipe; check the path")
    if path and not os.access(path, os.R_OK):
        raise PreflightError(f"--dataset-path '{path}' is not readable; check its permissions")
    ca_cert = cfg.target.ca_cert
    if ca_cert:
        try:
            ssl.create_default_context(cafile=ca_cert)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise PreflightError(f"--ca-cert '{ca_cert}' is not a readable PEM CA bundle ({reason})") from None


def preflight(cfg: RunConfig) -> Preflight:
    """Every cheap check, in order of cost, before any prompt is built."""
    check_files(cfg)
    trace_file = read_trace_file(cfg)
    try:
        out_dir = results_mod.check_writable(cfg.output.output_dir)
    except PermissionError as exc:
        raise PreflightError(str(exc)) from None

    try:
        served = control.models(cfg.target.base_url, cfg.target.api_key, timeout_s=min(cfg.target.timeout_s, 10.0),
                                connection=cfg.connection())
    except control.ControlError as exc:
        if cfg.target.model is None or exc.kind in ("tls", "connect", "timeout"):
            hint = " (or pass --model NAME)" if exc.kind in ("http", "not_json") else ""
            raise PreflightError(f"{exc}{hint}") from None
        served = []  # a server without /v1/models (SGLang native): the stream probe decides
    names = [m.id for m in served]
    model = cfg.target.model
    if model is None:
        if not names:
            raise PreflightError(f"{cfg.target.base_url}/v1/models lists no model; pass --model NAME")
        model = names[0]
    elif names and model not in names:
        raise PreflightError(f"the server does not serve model '{model}' (it has: {', '.join(names[:5])}); fix --model")
    max_model_len = next((m.max_model_len for m in served if m.id == model), None)
    if cfg.workload.dataset == "random":
        check_context(cfg.max_input_len(), cfg.max_output_len(), max_model_len, model)

    tokenizer_id = cfg.workload.tokenizer_for(model)
    if tokenizer_id is None:
        raise PreflightError(
            f"model '{model}' is not a local folder, so its tokenizer cannot be found offline; "
            "pass --tokenizer PATH (a folder with tokenizer.json) or --tokenizer deepseek-r1"
        )

    try:
        resolve_tokenizer_path(tokenizer_id)  # found now; loaded only if the prompt set is not cached
    except TokenizerError as exc:
        raise PreflightError(str(exc)) from None
    salt = run_salt(cfg.target.cache_salt)
    probe_stream(cfg, model, salt if cfg.target.salt_mode == "body" else None)
    version, facts = server_facts(cfg)
    return Preflight(
        model=model,
        tokenizer_id=tokenizer_id,
        server_version=version,
        output_dir=out_dir,
        max_model_len=max_model_len,
        server=facts or None,
        cache_salt=salt,
        trace_file=trace_file,
    )


def read_trace_file(cfg: RunConfig) -> Trace | None:
    """A trace dataset's file, read whole and checked before anything is sent (None for other datasets)."""
    if not cfg.workload.is_trace:
        return None

    try:
        return read_trace(cfg.workload.dataset_path or "", cfg.workload.dataset, cfg.workload.block_size)
    except WorkloadError as exc:
        raise PreflightError(str(exc)) from None


def check_context(max_input: int, max_output: int, max_model_len: int | None, model: str) -> None:
    """Fail before any work when no request could fit the server's context window.

    vLLM rejects every request whose prompt plus ``max_tokens`` exceeds the model's
    ``max_model_len`` (HTTP 400): a run that can only fail is not worth starting.
    """
    if max_model_len is None or max_input + max_output <= max_model_len:
        return
    if max_input >= max_model_len:
        raise PreflightError(
            f"prompts of up to {max_input} tokens do not fit {model}'s context of {max_model_len} tokens "
            f"(the server's max_model_len): lower --input-len, or restart the server with a larger --max-model-len")
    raise PreflightError(
        f"{max_input} prompt + {max_output} output tokens exceed {model}'s context of {max_model_len} tokens "
        f"(the server's max_model_len): lower --output-len to at most {max_model_len - max_input} or --input-len, "
        "or restart the server with a larger --max-model-len")
