"""SGLang: the parts of its command line that are not plain flag data.

SGLang uses plain argparse, so unlike vLLM it rejects ``--mem_fraction_static``;
the flag data records that (``underscores: reject``) and the renderer always
writes hyphens. Its real parser can be run against our command lines with
``python -m launcher.engines.sglang_parser``.
"""

from __future__ import annotations

NAME = "sglang"


def extra_env(environ: dict[str, str], host_facts: tuple[str, str] | None = None) -> dict[str, str]:
    """SGLang needs no host-address pinning on a single node."""
    return {}
