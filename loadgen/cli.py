"""The ``loadgen`` command: options → :class:`~loadgen.config.RunConfig` → :func:`~loadgen.sweep.run_all`.

Option names follow vLLM's ``benchmark_serving.py`` and SGLang's ``bench_serving``
where they exist (their spellings are accepted as aliases), so a command line from
either tool mostly works unchanged. Any bad option or failed pre-flight check ends
in one line on stderr and exit code 2; nothing runs before the checks pass.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from loadgen import __version__, interrupts, options, peer_flags
from loadgen.cli_errors import OneLineErrors
from loadgen.config import ConfigError, RunConfig
from loadgen.connection import INSECURE_WARNING

# Exit codes (docs/loadgen.md): 0 done; 2 bad option or failed pre-flight check;
# 3 a point in which no request succeeded (its result file is written); 128 + N stopped
# by signal N (130 Ctrl-C, 143 SIGTERM) after writing every point that ran.
EXIT_NOTHING_MEASURED = 3


def normalize_argv(args: list[str]) -> list[str]:
    """``--goodput ttft:500 tpot:50`` → ``--goodput ttft:500 --goodput tpot:50`` (click repeats options)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        out.append(arg)
        i += 1
        if arg in options.WORDS:
            first = True
            while i < len(args) and not args[i].startswith("-"):
                if not first:
                    out.append(arg)
                out.append(args[i])
                first = False
                i += 1
    return out


class LoadgenCommand(OneLineErrors, click.Command):
    """A click command whose errors are one line (no usage block) and exit code 2."""

    prog = "loadgen"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {o for p in self.params if isinstance(p, click.Option) and not p.is_flag for o in p.opts}
        try:  # vLLM's and SGLang's benchmark flags loadgen does not declare (docs/loadgen.md#coming-from-vllm-or-sglang)
            args = peer_flags.translate(list(args), takes_value)
        except peer_flags.PeerFlagError as exc:
            raise click.UsageError(str(exc)) from None
        return super().parse_args(ctx, normalize_argv(args))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """``--help`` lists the options under the part of the run they set (loadgen/options.py)."""
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(options.group_of(param.name), []).append(record)
        for title in sorted(sections, key=options.GROUPS.index):
            with formatter.section(title):
                formatter.write_dl(sections[title])

    def main(self, args: Any = None, *rest: Any, **extra: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        plugged = plugged_command(args[0]) if args and not args[0].startswith("-") and self.name != "search" else None
        if plugged is not None:
            return plugged.main(args[1:], f"loadgen {args[0]}")
        return super().main(args, *rest, **extra)


def plugged_command(name: str) -> Any:
    """A subcommand registered in the ``loadgen.commands`` entry-point group: ``loadgen compare``
    comes from analysis so (loadgen names no package it must not import), and ``loadgen search``
    too, since the search command builds on this one."""
    from importlib.metadata import entry_points

    found = entry_points(group="loadgen.commands", name=name)
    return next(iter(found)).load() if found else None


@click.command(cls=LoadgenCommand, params=options.click_params(),
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="loadgen")
def main(**opts: Any) -> None:
    """Benchmark an OpenAI-compatible or SGLang inference server with streaming requests.

    \b
    Examples:
      loadgen --rate inf --concurrency 256 --tokenizer deepseek-r1
      loadgen --backend openai-chat --concurrency 1,2,4,8,16 --input-len 128 --output-len 128
      loadgen --rate 1,2,4,inf --duration 60 --goodput ttft:500 tpot:50

    vLLM's and SGLang's benchmark flags are understood too (docs/loadgen.md, "Coming from vLLM or SGLang").
    """
    try:
        cfg = config_from_options(opts, explicit_options(click.get_current_context()))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    from rich.console import Console

    if cfg.target.insecure:
        click.echo(INSECURE_WARNING, err=True)
    # piped output (CI logs) gets a fixed, wide layout instead of rich's 80 columns
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    progress_console = Console(stderr=True)
    from loadgen.server_checks import PreflightError  # late: cold start (perf/footprint.py startup)
    from loadgen.sweep import run_all
    from loadgen.workload.errors import WorkloadError

    interrupts.install()
    try:
        results = run_all(cfg, console=console, progress_console=progress_console)
    except (PreflightError, WorkloadError) as exc:  # WorkloadError: e.g. a session run's reply counter did not start
        raise click.UsageError(str(exc)) from None
    except interrupts.Interrupted as exc:
        written = exc.results
        if written:
            partial = " (the last one partial)" if written[-1].get("partial") else ""
            click.echo(f"loadgen: stopped by {exc.name}; {len(written)} point(s) written{partial}", err=True)
        else:
            click.echo(f"loadgen: stopped by {exc.name} before the first point ran; nothing was measured", err=True)
        sys.exit(exc.exit_code)
    empty = [r for r in results if not r.get("completed")]
    if empty:
        click.echo(f"loadgen: error: no request succeeded in {len(empty)} of {len(results)} point(s) "
                   f"({', '.join(f'{k}={v}' for k, v in empty[0].get('errors_by_kind', {}).items())}); "
                   "the result files say why", err=True)
        sys.exit(EXIT_NOTHING_MEASURED)


def explicit_options(ctx: click.Context) -> set[str]:
    """The options given on the command line or through their environment variable."""
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return {name for name in ctx.params if ctx.get_parameter_source(name) in given}


def config_from_options(opts: dict[str, Any], explicit: set[str] | None = None) -> RunConfig:
    """Click's parsed options → a validated configuration (raises ConfigError).

    With ``--config FILE`` the file gives every field, and the options in ``explicit``
    (given on the command line or by environment) override it.
    """
    flat = options.flat_from_options(opts)
    if opts.get("config_file"):
        from loadgen import config_file

        given = explicit or set()
        saved = config_file.read(opts["config_file"])
        flat = {**saved, **{k: v for k, v in flat.items() if k not in saved or given & set(options.SET_BY.get(k, (k,)))}}
    return RunConfig.from_flat(**flat)


if __name__ == "__main__":
    main()
