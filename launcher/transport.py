"""How a node's command reaches its node: the system's ``ssh``, or this machine's ``sh``.

Both transports run the *same* shell script, so the local one (used by tests and
for nodes that are this machine) exercises exactly what ssh would run remotely.
The script puts the command in its own session with ``setsid -w`` and prints
that session's id first, so stopping is ``kill -TERM -PGID`` on the node: closing
an ssh connection does not stop a remote process, and a remote process tree
cannot be found from here any other way. The user's ssh keys and
``~/.ssh/config`` apply unchanged; we only add ``BatchMode`` (no password
prompt in the middle of a start) and keep-alives.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

PGID_LINE = "loadgen-node pgid"
PGID_RE = re.compile(rf"^{PGID_LINE} (\d+)$")
WATCH_S = 0.5  # how often a tied node checks that its launcher is still there
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "ConnectTimeout=15")


def start_script(argv: Sequence[str], env: dict[str, str], cwd: str | None = None, *, tied: bool = False) -> str:
    """Shell text that runs ``argv`` with ``env`` in a new session and first prints ``loadgen-node pgid N``.

    ``tied``: the session also ends when the process that started it ends. A new
    session escapes every signal meant for the launcher's own, so a launcher killed
    with SIGKILL would leave the node serving; a watcher in the session polls the
    ``setsid -w`` process (which, on this machine, dies with the launcher:
    PR_SET_PDEATHSIG) and, once it is gone, sends SIGTERM to the whole group.
    """
    watch = (f"p=$PPID; (while kill -0 $p 2>/dev/null && kill -0 $$ 2>/dev/null; do sleep {WATCH_S}; done; "
             "kill -TERM -$$ 2>/dev/null) & ") if tied else ""
    inner = f'echo "{PGID_LINE} $$"; {watch}exec env {_env_words(env)}{shlex.join(argv)}'
    cd = f"cd {shlex.quote(cwd)} && " if cwd else ""
    return f"{cd}exec setsid -w sh -c {shlex.quote(inner)}"


def _env_words(env: dict[str, str]) -> str:
    return "".join(f"{shlex.quote(f'{k}={v}')} " for k, v in env.items())


def stop_script(pgid: int, timeout_s: float, cleanup: Sequence[Sequence[str]] = ()) -> str:
    """SIGTERM the session's group, wait, SIGKILL; run the cleanup commands; exit 0 only if the group is gone.

    ``kill -SIG -PGID``, never ``kill -SIG -- -PGID``: dash (``/bin/sh`` on Debian and
    Ubuntu) takes no ``--`` and would fail without a word."""
    ticks = max(1, int(timeout_s * 10))
    g = int(pgid)
    after = "".join(f"{shlex.join(c)} >/dev/null 2>&1; " for c in cleanup)
    return (
        f"kill -TERM -{g} 2>/dev/null; i=0; "
        f"while kill -0 -{g} 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done; "
        f"kill -KILL -{g} 2>/dev/null; i=0; "
        f"while kill -0 -{g} 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; "
        f"{after}"
        f"if kill -0 -{g} 2>/dev/null; then echo 'loadgen-node: group {g} survived SIGKILL'; exit 1; fi; exit 0"
    )


def alive_script(pgid: int) -> str:
    return f"kill -0 -{int(pgid)} 2>/dev/null"


def parse_pgid(line: str) -> int | None:
    m = PGID_RE.match(line.strip())
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class LocalTransport:
    """Runs node scripts on this machine with ``sh -c`` (nodes that are this host; tests)."""

    name: str = "local"

    def argv(self, target: str, script: str) -> list[str]:
        return ["sh", "-c", script]


@dataclass(frozen=True)
class SshTransport:
    """Runs node scripts with the system ``ssh`` (the user's keys and config; ``options`` are added)."""

    ssh: str = "ssh"
    options: tuple[str, ...] = field(default=SSH_OPTIONS)
    name: str = "ssh"

    def argv(self, target: str, script: str) -> list[str]:
        # ssh joins its arguments with spaces for the remote shell: the script is one argument, already quoted inside.
        return [self.ssh, *self.options, target, script]
