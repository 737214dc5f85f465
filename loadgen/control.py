"""Control-plane HTTP: the few blocking requests made before (and between) runs.

``/v1/models``, ``/version``, ``/tokenize`` — never the measured streams, which go
through :mod:`loadgen.client`. One helper, one policy, so that every control request
behaves alike:

* **Proxies: none.** Environment proxies (``HTTP_PROXY``, ``HTTPS_PROXY``) are ignored,
  as they are by the streaming client: a benchmark talks to the server directly, and
  a control request that went through a proxy while the load did not would check a
  different path than the one measured.
* Plain ``urllib``: a handful of calls with no event loop, and nothing heavy to import
  before the first request.
* Failures are :class:`ControlError` with a ``kind`` (``connect``, ``timeout``,
  ``tls``, ``http``, ``not_json``) and a one-line message; callers decide by kind,
  never by searching the text.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from loadgen.connection import DEFAULT as DEFAULT_CONNECTION
from loadgen.connection import Connection, cert_error_message, is_cert_error
from loadgen.errors import LoadgenError
from loadgen.redaction import mask_url

READ_LIMIT = 1 << 20


class ControlError(LoadgenError, OSError):
    """A control request failed; ``kind`` says how, the message says what to do."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message, kind)
        self.status = status


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or :class:`ControlError` (``not_json``)."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise ControlError("not_json", "the server did not answer JSON", self.status) from None


@dataclass(frozen=True)
class ModelInfo:
    """One entry of ``/v1/models``; ``max_model_len`` where the server says it (vLLM)."""

    id: str
    max_model_len: int | None = None


def _opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    handlers: list[Any] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def request(
    url: str,
    *,
    api_key: str | None = None,
    body: Any = None,
    timeout_s: float = 10.0,
    connection: Connection = DEFAULT_CONNECTION,
    read_limit: int = READ_LIMIT,
) -> Response:
    """GET (or POST ``body`` as JSON) ``url``; any HTTP status is a :class:`Response`.

    ``connection`` brings the credentials and TLS trust every request must share.
    Raises :class:`ControlError` only when no HTTP answer came back.
    """
    headers = {"Accept": "*/*", **connection.headers(api_key)}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    context = connection.ssl_context() if url.startswith("https:") else None
    try:
        with _opener(context).open(req, timeout=timeout_s) as resp:
            return Response(resp.status, resp.headers.get("Content-Type", ""), resp.read(read_limit))
    except urllib.error.HTTPError as exc:
        ctype = exc.headers.get("Content-Type", "") if exc.headers else ""
        return Response(exc.code, ctype, exc.read(read_limit))
    except TimeoutError:
        raise ControlError("timeout", f"{mask_url(url)} did not answer within {timeout_s:g} s: is the server up and ready?") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if is_cert_error(exc):
            raise ControlError("tls", cert_error_message(url, exc)) from None
        if isinstance(reason, ssl.SSLError):
            raise ControlError("tls", f"{mask_url(url)}: TLS handshake failed ({reason}); check the URL's scheme and port") from None
        if isinstance(reason, TimeoutError):
            raise ControlError("timeout", f"{mask_url(url)} did not answer within {timeout_s:g} s: is the server up and ready?") from None
        raise ControlError("connect", f"cannot reach {mask_url(url)} ({reason}): is the server running? check --base-url") from None
    except (ConnectionError, OSError) as exc:
        raise ControlError("connect", f"cannot reach {mask_url(url)} ({exc}): is the server running? check --base-url") from None


def models(
    base_url: str, api_key: str | None = None, *, timeout_s: float = 10.0,
    connection: Connection = DEFAULT_CONNECTION,
) -> list[ModelInfo]:
    """The served models (``/v1/models``), with ``max_model_len`` where the server gives it."""
    root = base_url.rstrip("/")
    url = f"{root}/models" if root.endswith("/v1") else f"{root}/v1/models"
    resp = request(url, api_key=api_key, timeout_s=timeout_s, connection=connection)
    if resp.status in (401, 403):
        raise ControlError("http", f"{url} answered HTTP {resp.status}: check --api-key", resp.status)
    if resp.status != 200:
        raise ControlError("http", f"{url} answered HTTP {resp.status}: is this an OpenAI-compatible server?", resp.status)
    try:
        payload = resp.json()
    except ControlError:
        raise ControlError("not_json", f"{url} did not answer JSON: is this an OpenAI-compatible server?") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return []
    out = []
    for m in data:
        if not isinstance(m, dict) or m.get("id") is None:
            continue
        mml = m.get("max_model_len")
        out.append(ModelInfo(str(m["id"]), mml if isinstance(mml, int) and mml > 0 else None))
    return out
