"""How loadgen reaches a server beyond its address: credentials and TLS trust.

One value (:class:`Connection`) carries the choices every piece of network code
must agree on -- the hot-path client, the ``/v1/models`` probe, the ``/tokenize``
check and ``/version`` -- so that ``--ca-cert``, ``--insecure`` and credentials
given in ``--base-url`` mean the same thing everywhere.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from loadgen.redaction import basic_token, mask_url

INSECURE_WARNING = (
    "loadgen: WARNING: --insecure: TLS certificates are NOT verified; anyone on the path can read "
    "and alter this benchmark's traffic"
)


@dataclass(frozen=True)
class Connection:
    """Credentials from the base URL, and whom to trust for HTTPS."""

    basic_auth: tuple[str, str] | None = None  # (user, password) taken out of --base-url
    ca_cert: str | None = None  # a PEM bundle to trust (--ca-cert)
    insecure: bool = False  # no certificate verification at all (--insecure)

    def ssl_context(self) -> ssl.SSLContext:
        """The context for an https target: system trust, plus ``ca_cert``, or none at all."""
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=self.ca_cert) if self.ca_cert else ssl.create_default_context()

    def authorization(self, api_key: str | None) -> str | None:
        """The ``Authorization`` header value: the API key as a bearer token, else Basic credentials."""
        if api_key:
            return f"Bearer {api_key}"
        if self.basic_auth:
            return "Basic " + basic_token(*self.basic_auth)
        return None

    def headers(self, api_key: str | None) -> dict[str, str]:
        value = self.authorization(api_key)
        return {"Authorization": value} if value else {}


DEFAULT = Connection()


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and what it wraps (urllib's ``reason``, aiohttp's ``certificate_error`` and
    ``os_error``, ``__cause__``)."""
    out: list[BaseException] = []
    while exc is not None and len(out) < 6 and exc not in out:
        out.append(exc)
        reason = getattr(exc, "reason", None)
        if not isinstance(reason, BaseException):
            reason = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc.__cause__
        exc = reason
    return out


def is_cert_error(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what it wraps) is a failed certificate verification."""
    return any(isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e)
               for e in _chain(exc))


def cert_error_message(url: str, exc: BaseException | None) -> str:
    """One line for a refused certificate: what failed and the two ways forward."""
    reason = next((str(getattr(e, "verify_message", "")) for e in _chain(exc) if getattr(e, "verify_message", None)),
                  "certificate verify failed")
    return (
        f"TLS certificate verification failed for {mask_url(url)} ({reason}): trust its CA with "
        "--ca-cert FILE, or skip verification with --insecure"
    )
