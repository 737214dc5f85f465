"""Mask secrets in command lines, environments and URLs before they are printed or stored.

An engine started with ``--api-key`` (or a Docker command carrying ``-e
HF_TOKEN=...``) must still get the real value; only what we show on a terminal,
write to a log header, a state file or a result is masked. Which values are
secret is decided by name, so a flag we have never seen (``--admin-api-key``)
is covered, while look-alikes that are not secrets (``--max-num-batched-tokens``,
``--tokenizer``) are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

SECRET = "***"

# A flag whose last word names a credential: --api-key, --admin-api-key, --hf-token, --password.
_SECRET_FLAG = re.compile(r"^--?(?:[\w-]*[-_])?(?:api[-_]?key|token|secret|password|passwd)$", re.IGNORECASE)
# An environment variable holding a credential: HF_TOKEN, OPENAI_API_KEY, AWS_SECRET_ACCESS_KEY, DB_PASSWORD.
_SECRET_ENV = re.compile(r"(?:^|_)(?:API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|ACCESS_KEY)(?:_|$)", re.IGNORECASE)
_ENV_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@", re.IGNORECASE)


def is_secret_flag(flag: str) -> bool:
    return bool(_SECRET_FLAG.match(flag))


def is_secret_env(name: str) -> bool:
    return bool(_SECRET_ENV.search(name))


def mask_url(text: str) -> str:
    """``http://user:pw@host`` → ``http://***@host``; anything else unchanged."""
    return _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{SECRET}@", text)


def mask_argv(argv: Sequence[object]) -> list[str]:
    """A copy of ``argv`` with the values of secret flags, secret ``NAME=value`` items and URL credentials masked."""
    out: list[str] = []
    hide_next = False
    for item in (str(a) for a in argv):
        if hide_next:
            out.append(SECRET)
            hide_next = False
            continue
        flag, eq, _ = item.partition("=")
        if item.startswith("-") and is_secret_flag(flag):
            if eq:
                out.append(f"{flag}={SECRET}")
            else:
                out.append(item)
                hide_next = True
            continue
        assign = _ENV_ASSIGN.match(item)
        if assign and is_secret_env(assign.group(1)):
            out.append(f"{assign.group(1)}={SECRET}")
            continue
        out.append(mask_url(item))
    return out


def secret_values(argv: Sequence[object], env: Mapping[str, object], extra: Sequence[str] = ()) -> list[str]:
    """The secret values themselves (of secret flags and variables), longest first, so output can be masked.

    Values shorter than 4 characters are left out: masking every "ab" in a log hides more than it protects.
    """
    masked = mask_argv(argv)
    found = {str(a) for a, m in zip((str(x) for x in argv), masked, strict=True) if a != m}
    found = {v.partition("=")[2] if "=" in v and v.startswith("-") else v for v in found}
    found |= {str(v) for k, v in env.items() if is_secret_env(str(k))} | set(extra)
    return sorted((v for v in found if len(v) >= 4), key=len, reverse=True)


# What engines print of their own arguments: api_key='sk-1' (a repr), --api-key sk-1, api-key: sk-1.
_ECHOED = re.compile(
    r"(?P<name>(?:--|\b)(?:[\w-]*[-_])?(?:api[-_]?key|token|secret|password|passwd))"
    r"(?P<sep>'?\s*[=:]\s*['\"]?|(?<=[\w])\s+(?=\S))"
    r"(?P<value>(?!None\b|\*\*\*)[^\s'\",)]+)",
    re.IGNORECASE,
)


def mask_text(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with the given secret values, and any value printed after a secret's name, shown as ``***``.

    For log lines read back (diagnosis, last error): the values come from the plan
    when known; the name pattern catches what an older log holds without them.
    """
    for value in secrets:
        text = text.replace(value, SECRET)
    def hide(m: re.Match) -> str:
        if m.group("sep").isspace() and not m.group("name").startswith("--"):
            return m.group(0)  # "the token is": prose, not a flag and its value
        return f"{m.group('name')}{m.group('sep')}{SECRET}"

    return _ECHOED.sub(hide, text)


def mask_env(env: Mapping[str, object]) -> dict[str, str]:
    """A copy of ``env`` with the values of secret variables masked."""
    return {str(k): SECRET if is_secret_env(str(k)) else mask_url(str(v)) for k, v in env.items()}
