"""The one base of every error the launcher raises on purpose.

Each message is one line naming the problem and the fix; the command line prints it as
``loadgen-launch: error: ...`` (exit code 2 for bad input, 1 for a failed start or check).
Several keep a standard base beside it, so that callers that only know "bad input"
(``ValueError``) or "it failed" (``RuntimeError``) still catch them::

    LauncherError
    ├── PlanError (ValueError)          engines/errors.py: no plan for these flags
    ├── MemoryInputError (ValueError)   memory.py: inputs that give no memory plan
    ├── HeaderError (ValueError)        checkpoint_checks.py: a safetensors header that cannot be read
    ├── ProfileError (ValueError)       sim/profiles.py: a sim profile not found or invalid
    ├── LaunchError (RuntimeError)      lifecycle.py: the server did not come up
    ├── ClusterError (RuntimeError)     cluster.py: a multi-node start failed
    ├── InstallError (RuntimeError)     vllm_cpu.py: a step of the CPU vLLM install failed
    ├── RealParserError (RuntimeError)  engines/real_parser.py: the engine's own parser would not run
    ├── NotReady                        readiness.py: the wait ended without readiness (why, and the exit code)
    └── ApiError                        sim/api.py: becomes the sim's OpenAI-style error body
"""

from __future__ import annotations


class LauncherError(Exception):
    """Base of the launcher's own errors."""
