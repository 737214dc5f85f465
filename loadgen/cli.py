"""The ``loadgen`` command."""

from __future__ import annotations

import click

from loadgen import __version__


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loadgen")
def main() -> None:
    """Benchmark an OpenAI-compatible inference server."""
