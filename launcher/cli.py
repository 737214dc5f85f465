"""The ``loadgen-launch`` command."""

from __future__ import annotations

import click

from launcher import __version__


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Examples:\n\n  loadgen-launch serve --engine sim --port 8000 --profile fast",
)
@click.version_option(__version__, prog_name="loadgen-launch")
def main() -> None:
    """Start, check, diagnose and stop inference servers (vllm, sglang, sim)."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--engine", type=click.Choice(["sim", "vllm", "sglang"]), default="sim", show_default=True)
@click.argument("engine_args", nargs=-1, type=click.UNPROCESSED)
def serve(engine: str, engine_args: tuple[str, ...]) -> None:
    """Run a server in the foreground; options after --engine go to the engine."""
    if engine == "sim":
        from launcher.sim.server import main as sim_main

        sim_main(list(engine_args))
        return
    raise click.UsageError(f"engine '{engine}' is not supported by this build yet")
