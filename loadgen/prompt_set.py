"""A run's prompt set: built once before the first point, salted, verified against the server.

The set is complete before the clock starts (nothing is tokenized or generated on the
hot path). Warm-up requests get prompts of their own, so a prefix-caching server does
not see the measured prompts before they are measured.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console

from loadgen import budget, workload
from loadgen.config import RunConfig
from loadgen.records import Prompt
from loadgen.server_checks import Preflight, PreflightError, check_context
from loadgen.workload import pieces, verify_with_server
from loadgen.workload.errors import WorkloadError
from loadgen.workload.fit import view_of
from loadgen.workload.recount import Recount
from loadgen.workload.salt import PieceSalt, salt_prompts
from loadgen.workload.tokenizer import TokenizerError, load_tokenizer


def build_trace(cfg: RunConfig, pre: Preflight) -> Sequence[Prompt]:
    """A trace replay's prompts (built as they are released) and, in ``pre.trace``, its timeline."""

    spec = cfg.workload.spec(num_prompts=cfg.workload.num_prompts or 1, chat=cfg.chat, seed=cfg.seed,
                             tokenizer=pre.tokenizer_id)
    try:
        pre.trace = workload.build_trace(spec, cfg.workload.replay(), max_model_len=pre.max_model_len,
                                         trace=pre.trace_file)
    except WorkloadError as exc:
        raise PreflightError(str(exc)) from None
    pre.local_check = {"checked": workload.last_build.checked, "ok": True, "background": False}
    if cfg.target.salt_mode == "prefix" and pre.cache_salt:
        pre.trace.prompts.salt = PieceSalt(pre.trace.prompts.blocks.table.texts.tolist(), pre.cache_salt)
    return pre.trace.prompts


def build_prompts(cfg: RunConfig, pre: Preflight) -> Sequence[Prompt]:
    """The prompt set shared by every point (built once, before the clock starts)."""
    if cfg.workload.is_trace:
        return build_trace(cfg, pre)
    # A random set is built with --warmup's prompts beside the measured ones, so that the warm-up fills
    # no prefix cache the measured requests then hit (a dataset's rows are all used as measured prompts).
    needed = cfg.prompts_needed()
    warm = cfg.schedule.warmup if cfg.workload.dataset == "random" else 0
    # Lengths are drawn around --input-len (vLLM's range rule: its mean), so a large set holds that many
    # tokens per prompt on average; checked before a single prompt is built.
    problem = budget.too_many_prompts(needed + warm, cfg.workload.input_len, budget.available_bytes())
    if problem is not None:
        raise PreflightError(problem)
    spec = cfg.workload.spec(num_prompts=needed + warm, chat=cfg.chat, seed=cfg.seed,
                             tokenizer=pre.tokenizer_id)

    try:
        prompts = list(workload.build_prompts(spec, defer_check=True))
    except WorkloadError as exc:
        raise PreflightError(str(exc)) from None
    built = workload.last_build
    if cfg.target.salt_mode == "prefix" and pre.cache_salt:
        prompts = salted(prompts, pre, built.fingerprint)
    if built.deferred:
        pre.recount = Recount(pre.tokenizer_id, prompts, fingerprint=built.fingerprint, cache_file=built.cache_file)
    elif built.checked:
        pre.local_check = {"checked": built.checked, "ok": True, "background": False}
    if prompts and pre.max_model_len is not None:
        longest = max(prompts, key=lambda p: p.input_len + p.output_len)
        check_context(longest.input_len, longest.output_len, pre.max_model_len, pre.model)
    if warm and len(prompts) > needed:
        pre.warm_prompts, prompts = prompts[needed:], prompts[:needed]
    return prompts


def salted(prompts: list[Prompt], pre: Preflight, fingerprint: str | None) -> list[Prompt]:
    """``--cache-salt-mode prefix``: a random set with its leading pieces salted (same lengths)."""

    found = pieces.cached(fingerprint) if fingerprint else None
    table: pieces.PieceTable | None = None
    try:
        if found is not None:
            table = found[0]
        else:  # the table is not on disk (a set built in this process): the tokenizer has it

            table = view_of(load_tokenizer(pre.tokenizer_id)).pieces
        if table is None:
            raise WorkloadError("--cache-salt-mode prefix needs prompts built from the tokenizer's pieces, and this "
                                "tokenizer has no piece table; use --cache-salt-mode body (vLLM) or --reset-prefix-cache")
        return salt_prompts(prompts, PieceSalt(table.texts.tolist(), pre.cache_salt or ""))
    except (WorkloadError, TokenizerError) as exc:
        raise PreflightError(str(exc)) from None


def verify_prompts(cfg: RunConfig, pre: Preflight, prompts: Sequence[Prompt], console: Console) -> None:
    """Let the server count a sample of the prompts (``/tokenize``) before any load.

    A disagreement stops the run: every figure per input token would be wrong. A
    server without ``/tokenize`` is fine unless ``--verify-prompts`` was asked for.
    """
    if cfg.workload.verify_prompts is False:
        return

    res = verify_with_server(cfg.target.base_url, pre.model, prompts, api_key=cfg.target.api_key, timeout_s=min(cfg.target.timeout_s, 30.0),
                             connection=cfg.connection())
    pre.verification = {"supported": res.supported, "ok": res.ok, "checked": res.checked,
                        "max_diff": res.max_diff, "message": res.message}
    if not res.supported:
        if cfg.workload.verify_prompts:
            raise PreflightError(f"{res.message}; --verify-prompts needs it: use --no-verify-prompts")
        console.print(f"note: {res.message}", highlight=False, soft_wrap=True)
        return
    if not res.ok:
        raise PreflightError(f"{res.message} (or pass --no-verify-prompts to run anyway)")
    console.print(f"prompts verified: {res.message}", highlight=False, soft_wrap=True)
