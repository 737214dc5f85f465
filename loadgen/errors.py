"""The one base of every error loadgen raises on purpose.

Each error carries a ``kind`` (a short word such as ``connect``, ``http_503``,
``timeout``, ``option``) so that callers decide by kind, never by searching the
message; the message itself is one line naming the problem and the fix. Several keep
a standard base beside it, so that callers that only know "bad input" (``ValueError``)
or "it failed" (``RuntimeError``) still catch them::

    LoadgenError
    ├── ConfigError (ValueError)         config.py: a bad option or --config file (exit 2)
    ├── WorkloadError (ValueError)       workload/errors.py: prompts that cannot be built
    ├── TokenizerError (ValueError)      workload/tokenizer.py: a tokenizer that cannot be loaded
    ├── ChatTemplateError (ValueError)   workload/chat_template.py: messages the template cannot render
    ├── FitError                         workload/fit.py: one prompt not fitted (the caller words it)
    ├── PeerFlagError (ValueError)       peer_flags.py: a vLLM/SGLang benchmark flag refused, or a bad value
    ├── SearchError (ValueError)         search/method.py: a bad search specification
    ├── PreflightError (RuntimeError)    server_checks.py: the server failed a check before the run
    ├── ServerLost (RuntimeError)        search/probes.py: the server stopped answering mid-search (exit 3)
    ├── ClientError                      client/target.py: a target that cannot be reached or spoken to
    ├── NoKernelStamps                   client/stamped.py: no SO_TIMESTAMPING; the plain transport is used
    ├── MalformedEvent (ValueError)      protocols/base.py: an event that is not the expected JSON
    ├── RepeatError                      convergence.py: a bad --repeat/--repeat-width/--repeat-metric
    ├── ControlError (OSError)           control.py: a control request failed
    ├── RayMissing (RuntimeError)        scale/ray_pool.py: --ray-address without Ray installed
    ├── FetchError (RuntimeError)        telemetry/scrape.py: a metrics page that did not come
    ├── PageError (ValueError)           telemetry/page.py: a body that is not Prometheus text
    └── GpuError (RuntimeError)          telemetry/gpu.py: a GPU source that failed to read

``interrupts.Interrupted`` is not among them: it is a ``KeyboardInterrupt`` (a signal, not an error).
"""

from __future__ import annotations


class LoadgenError(Exception):
    """Base of loadgen's own errors: ``kind`` for code, the message for people."""

    kind: str = "error"

    def __init__(self, message: str = "", kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# Request error kinds (RequestRecord.error) worth another try: the server or the
# network failed this once, not the configuration.
TRANSIENT_KINDS = ("timeout", "malformed", "http_429")


def is_transient(kind: str) -> bool:
    """Whether a request that failed with ``kind`` may succeed when sent again."""
    return kind in TRANSIENT_KINDS or kind.startswith(("http_5", "reset"))
