"""vLLM: the parts of its command line that are not plain flag data.

vLLM needs a routable address for its internal traffic; on dual-stack hosts it
can choose an IPv6 one and hang in NCCL/Gloo set-up, which is why the field report
pinned ``VLLM_HOST_IP``/``HOST_IP``. Everything else (entry points, flags,
readiness) is data in ``data/engine-vllm.json``.
"""

from __future__ import annotations

from launcher.engines.base import engine_data
from launcher.engines.hostip import host_ip_env, read_host_facts

NAME = "vllm"


def extra_env(environ: dict[str, str], host_facts: tuple[str, str] | None = None) -> dict[str, str]:
    """Variables to add for this host (``VLLM_HOST_IP`` and ``HOST_IP`` on dual-stack hosts)."""
    inet6, hostname_i = host_facts if host_facts is not None else read_host_facts()
    return host_ip_env(engine_data(NAME).get("host_ip_env", []), inet6, hostname_i, environ)
