"""Run an engine with its output copied to the launcher's log, its secrets replaced by ``***``.

Used only when the engine is given a secret (``--api-key``, a token): engines
echo their arguments at start (SGLang prints ``ServerArgs(..., api_key='...')``),
and the log is a plain file others read. Without a secret the engine writes its
log directly and this process does not exist, so the common case costs nothing.

``python -m launcher.logmask -- ENGINE ARGV...`` with stdout on the log. The
secrets come in ``LOADGEN_LOG_SECRETS`` (a JSON list; the environment is readable
by the same user only, like the engine's own ``VLLM_API_KEY``) and are removed
from the engine's environment. This process is the session leader the launcher
knows: it forwards SIGTERM/SIGINT to the engine, keeps copying until the engine's
output ends, and exits with the engine's code, so stopping, status and readiness
work on it as on the engine itself.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

SECRETS_ENV = "LOADGEN_LOG_SECRETS"
_MASK = b"***"
_READ = 65536
_IDLE_S = 0.2  # a partial line waits this long for its end before it is written as it is
_MAX_PENDING = 1 << 20


def mask_bytes(data: bytes, secrets: list[bytes]) -> bytes:
    for value in secrets:
        data = data.replace(value, _MASK)
    return data


def split_ready(pending: bytes, longest: int) -> tuple[bytes, bytes]:
    """(what can be masked and written now, what must wait): complete lines now; a secret may span the rest."""
    cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
    if cut == 0 and len(pending) > _MAX_PENDING:
        cut = len(pending) - max(longest - 1, 0)
    return pending[:cut], pending[cut:]


def copy_masked(fd_in: int, fd_out: int, secrets: list[bytes], child: subprocess.Popen) -> None:
    """Copy until end of output, or until the engine is gone and its output idle (a leftover child holds it)."""
    longest = max((len(s) for s in secrets), default=0)
    pending = b""
    while True:
        ready, _, _ = select.select([fd_in], [], [], _IDLE_S)
        if not ready:
            if pending:
                os.write(fd_out, mask_bytes(pending, secrets))
                pending = b""
            if child.poll() is not None:
                return
            continue
        chunk = os.read(fd_in, _READ)
        if not chunk:
            break
        now, pending = split_ready(pending + chunk, longest)
        if now:
            os.write(fd_out, mask_bytes(now, secrets))
    if pending:
        os.write(fd_out, mask_bytes(pending, secrets))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    env = dict(os.environ)
    secrets = [s.encode() for s in json.loads(env.pop(SECRETS_ENV, "[]") or "[]") if s]
    child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    assert child.stdout is not None
    copy_masked(child.stdout.fileno(), sys.stdout.fileno(), secrets, child)
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except FileNotFoundError as exc:
        print(f"cannot start {exc.filename!r}: {exc.strerror}", file=sys.stderr)
        sys.exit(127)
