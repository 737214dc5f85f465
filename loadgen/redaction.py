"""Keeping secrets out of what loadgen prints and stores.

A secret reaches loadgen three ways: ``--api-key``, credentials written into
``--base-url`` (``http://user:pw@host``), and a server that echoes a request
header back in an error body. Everything that prints or stores a URL or a server's
words goes through these helpers, so one place decides what a masked secret
looks like.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``http://user:pw@host:8000/x`` → (``http://host:8000/x``, (user, pw)); no userinfo → (url, None).

    The user and password are percent-decoded, as browsers and curl do.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return clean, (unquote(user), unquote(password))


def mask_url(url: str) -> str:
    """The URL with any userinfo replaced by ``***`` (``http://***@host``), for messages and files."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    hostport = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{MASK}@{hostport}", parts.path, parts.query, parts.fragment))


def basic_token(user: str, password: str) -> str:
    """The base64 credentials of an ``Authorization: Basic`` header."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def secret_values(api_key: str | None, basic_auth: tuple[str, str] | None) -> tuple[str, ...]:
    """Every string that must never appear in output: the key, the password, and the
    Basic header's token (a server may echo the header it was sent)."""
    found: list[str] = []
    if api_key:
        found.append(api_key)
    if basic_auth:
        user, password = basic_auth
        if password:
            found.append(password)
        found.append(basic_token(user, password))
    # longest first, so that a secret containing another is masked whole
    return tuple(sorted(set(found), key=len, reverse=True))


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text
