"""Where and how to send: the target, its parsed URL, and the request head built from them.

Everything here is computed once per run, before the clock starts; the hot path only
appends a Content-Length value and a body to :func:`request_head`'s bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from loadgen.connection import DEFAULT as DEFAULT_CONNECTION
from loadgen.connection import Connection
from loadgen.errors import LoadgenError


@dataclass
class Target:
    """Where and how to send: everything about a server that does not change per request."""

    base_url: str
    backend: str
    model: str
    endpoint: str | None = None
    api_key: str | None = None
    ignore_eos: bool = True
    extra_body: dict | None = None
    timeout_s: float = 600.0
    save_text: bool = False
    connection: Connection = DEFAULT_CONNECTION  # credentials from the URL, TLS trust


class ClientError(LoadgenError):
    """A problem with the target itself (bad URL, server unreachable, not SSE).

    Its message is one line naming the problem and what to change; ``kind`` is the
    failed request's error kind (``http_503``, ``reset``, ...) when there was one.
    """

    kind = "client"


@dataclass(frozen=True)
class Endpoint:
    """A parsed target URL: the address to connect to and the request-line prefix."""

    host: str
    port: int
    tls: bool
    path: str
    host_header: str

    @classmethod
    def parse(cls, base_url: str, endpoint: str) -> Endpoint:
        if "://" not in base_url:
            base_url = "http://" + base_url
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(
                f"base URL {base_url!r} is not an http(s) URL; give e.g. --base-url http://127.0.0.1:8000"
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ClientError(f"base URL {base_url!r} has an invalid port") from None
        if not endpoint.startswith("/"):
            endpoint = "/" + endpoint
        prefix = parts.path.rstrip("/")
        # "http://h:8000/v1" plus "/v1/completions" means "/v1/completions", not "/v1/v1/...".
        if prefix and (endpoint == prefix or endpoint.startswith(prefix + "/")):
            prefix = ""
        host = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host and not host.startswith("["):
            host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        return cls(host, port, parts.scheme == "https", prefix + endpoint, host_header)


def request_head(ep: Endpoint, api_key: str | None, connection: Connection = DEFAULT_CONNECTION) -> bytes:
    """Everything of a request before the Content-Length value; built once per run."""
    lines = [
        f"POST {ep.path} HTTP/1.1",
        f"Host: {ep.host_header}",
        "User-Agent: loadgen",
        "Accept: text/event-stream",
        "Content-Type: application/json",
        "Connection: keep-alive",
    ]
    authorization = connection.authorization(api_key)
    if authorization:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
