"""The ``loadgen-report`` command."""

from __future__ import annotations

import click

from analysis import __version__


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loadgen-report")
def main() -> None:
    """Turn result files into a summary, a comparison, plots and a report."""
