"""Click commands whose errors are one line, for every console script of the project.

Click's default answer to a bad option is a three-line usage block; the docs promise
``PROG: error: <what is wrong and the fix>`` on stderr and exit code 2, the form
vLLM's and SGLang's argparse tools give, and the form scripts can grep.
"""

from __future__ import annotations

import sys
from typing import Any

import click


class OneLineErrors:
    """Mixin for a ``click.Command`` or ``click.Group``: usage errors as one line, exit 2;
    Ctrl-C at a prompt as ``PROG: aborted``, exit 130. ``prog`` names the command."""

    prog = ""

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
        sys.exit(rv if isinstance(rv, int) else 0)
