"""The dual-stack host trap: vLLM (and torch.distributed under it) may pick an IPv6 address.

On a host with a global IPv6 address, the field report had to pin ``VLLM_HOST_IP``
and ``HOST_IP`` to the host's first address (``hostname -I | awk '{print $1}'``).
The decision is a pure function of two texts so it can be tested on any machine.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def has_global_ipv6(if_inet6: str) -> bool:
    """True when /proc/net/if_inet6 lists a global-scope address on a non-loopback interface."""
    for line in if_inet6.splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        addr, _index, _plen, scope, _flags, ifname = parts[:6]
        if ifname == "lo" or addr == "0" * 31 + "1":
            continue
        if scope == "00":
            return True
    return False


def first_host_address(hostname_i: str) -> str | None:
    """The first field of ``hostname -I`` output."""
    fields = hostname_i.split()
    return fields[0] if fields else None


def host_ip_env(names: list[str], if_inet6: str, hostname_i: str, environ: dict[str, str]) -> dict[str, str]:
    """The variables to add so the engine binds its internal traffic to the first address.

    Nothing is added on IPv4-only hosts or for a variable already set; when one of
    them is set (a preset pinning 127.0.0.1), the others follow it, so the engine
    never sees two different addresses.
    """
    if not names or not has_global_ipv6(if_inet6):
        return {}
    already = next((environ[n] for n in names if environ.get(n)), None)
    addr = already or first_host_address(hostname_i)
    if not addr:
        return {}
    return {n: addr for n in names if n not in environ}


def read_host_facts() -> tuple[str, str]:
    """(/proc/net/if_inet6, `hostname -I`) of this machine; empty strings where unavailable."""
    try:
        inet6 = Path("/proc/net/if_inet6").read_text()
    except OSError:
        inet6 = ""
    try:
        done = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5)
        hostname_i = done.stdout if done.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        hostname_i = ""
    return inet6, hostname_i
