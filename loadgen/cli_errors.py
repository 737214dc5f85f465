"""The one shell of every console script: errors as one line, exit codes the same everywhere.

Click's default answer to a bad option is a three-line usage block; the docs promise
``PROG: error: <what is wrong and the fix>`` on stderr and exit code 2, the form
vLLM's and SGLang's argparse tools give, and the form scripts can grep. ``loadgen``,
``loadgen-search``, ``loadgen-launch``, ``loadgen-report``, ``loadgen-compare`` and
``loadgen-bench`` all run through :class:`OneLineErrors`.

Exit codes shared by all of them (each command's page adds its own, e.g. 3 for a point
in which no request succeeded, docs/loadgen.md):

* 0: done.
* 1: the work failed (a server that did not start, a failed check, a failed point), or a
  deliberate error of the package reached the shell (one line, no traceback).
* 2: bad input: an unknown or bad option, a file that cannot be used (one line with the fix).
* 130: Ctrl-C at a prompt (``PROG: aborted``); a run stopped by a signal exits 128 + its number.

Imported by the launcher too (the only loadgen module it takes besides the sim's tokenizer),
so it depends on click and :mod:`loadgen.errors` alone.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from loadgen.errors import LoadgenError


class OneLineErrors:
    """Mixin for a ``click.Command`` or ``click.Group``: usage errors as one line, exit 2;
    Ctrl-C at a prompt as ``PROG: aborted``, exit 130; an uncaught ``deliberate`` error as
    one line, exit 1 (or its ``exit_code``). ``prog`` names the command in those lines;
    both can be given as keywords to ``click.command(cls=...)``."""

    prog = ""
    deliberate: tuple[type[Exception], ...] = (LoadgenError,)

    def __init__(self, *args: Any, prog: str | None = None,
                 deliberate: tuple[type[Exception], ...] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if prog is not None:
            self.prog = prog
        if deliberate is not None:
            self.deliberate = deliberate

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        prog = prog_name or self.prog or getattr(self, "name", None) or "command"
        try:
            rv = super().main(args, prog, complete_var, standalone_mode=False, **extra)  # type: ignore[misc]
        except click.UsageError as exc:
            click.echo(f"{prog}: error: {exc.format_message()}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo(f"{prog}: aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            click.echo(f"{prog}: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except self.deliberate as exc:
            click.echo(f"{prog}: error: {' '.join(str(exc).split())}", err=True)
            sys.exit(getattr(exc, "exit_code", 1))
        sys.exit(rv if isinstance(rv, int) else 0)


class OneLineCommand(OneLineErrors, click.Command):
    """A command whose errors are one line: ``click.command(cls=OneLineCommand, prog=...)``."""


class OneLineGroup(OneLineErrors, click.Group):
    """A group of commands whose errors are one line: ``click.group(cls=OneLineGroup, prog=...)``."""
