"""The ``loadgen-compare`` command (also ``loadgen compare``): a regression gate for CI.

Exit codes: 0 no gated metric regressed; 1 a gated metric regressed beyond the
threshold with the interval's support (its whole 95 % interval beyond it); 2 bad input (an option, a path, nothing
usable, runs that are not comparable); 3 a gated metric could not be judged
(no interval: no per-request data and too few repeats, or runs too short).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from analysis import __version__
from analysis.errors import AnalysisError
from analysis.regression import BY_KEY, METRICS
from loadgen.cli_errors import OneLineCommand

EPILOG = """\b
Examples:
  loadgen compare results/main/ results/pr/ --threshold 5%
  loadgen compare base.json new.json --metric ttft_p99 --metric output_throughput
  loadgen compare base/ new/ --format json > verdict.json
  loadgen compare base/ new/ >> "$GITHUB_STEP_SUMMARY"

\b
Exit codes: 0 pass; 1 a gated metric regressed beyond --threshold (its whole
95 % interval lies beyond it); 2 bad input or runs not comparable;
3 a gated metric could not be judged (no interval).
"""


def parse_threshold(text: str) -> float:
    """``5%`` or ``5`` → 0.05 (a percentage either way)."""
    raw = text.strip().rstrip("%").strip()
    try:
        value = float(raw) / 100.0
    except ValueError:
        value = -1.0
    if not (0.0 <= value < 10.0):
        raise click.BadParameter(f"'{text}' is not a percentage; give e.g. --threshold 5%", param_hint="--threshold")
    return value


def parse_metrics(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeated or comma-separated metric keys; all of them when none is given."""
    keys = [k.strip().lower() for v in values for k in v.split(",") if k.strip()]
    bad = [k for k in keys if k not in BY_KEY]
    if bad:
        raise click.BadParameter(f"unknown metric '{bad[0]}'; choose from {', '.join(BY_KEY)}", param_hint="--metric")
    return tuple(dict.fromkeys(keys)) or tuple(BY_KEY)


@click.command(cls=OneLineCommand, prog="loadgen-compare", deliberate=(AnalysisError,), context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(__version__, prog_name="loadgen-compare")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--threshold", default="5%", show_default=True,
              help="A regression is a change worse than this (relative) over the whole 95 % interval.")
@click.option("--metric", "metric_args", multiple=True, metavar="KEY",
              help=f"Gate only these (repeat, or comma-separated): {', '.join(BY_KEY)}. [default: all]")
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown", show_default=True,
              help="What to print on stdout.")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), default=None, metavar="FILE",
              help="Also write the JSON form to FILE.")
@click.option("--include-partial", is_flag=True, help="Use runs that stopped early too (left out by default).")
def main(base: Path, new: Path, threshold: str, metric_args: tuple[str, ...], fmt: str, json_out: Path | None,
         include_partial: bool) -> None:
    """Compare NEW against BASE (result files or folders, any format loadgen-report reads): per metric the
    relative change with a 95 % interval and a verdict; non-zero exit on a gated regression."""
    limit = parse_threshold(threshold)
    gated = parse_metrics(metric_args)
    from analysis.gate import NotComparable, gate, markdown
    from analysis.load import LoadError, Skipped, load

    frames = []
    for name, path in (("BASE", base), ("NEW", new)):
        skipped: list[Skipped] = []
        try:
            runs = load(path, include_partial=include_partial, skipped=skipped)
        except LoadError as exc:
            raise click.UsageError(f"{name}: {exc}") from None
        for item in skipped:
            click.echo(f"loadgen-compare: skipped {item}", err=True)
        if runs.empty:
            raise click.UsageError(f"{name}: every run in {path} is partial; rerun it or pass --include-partial")
        frames.append(runs)
    try:
        result = gate(frames[0], frames[1], METRICS, gated, limit)
    except NotComparable as exc:
        raise click.UsageError(str(exc)) from None
    data = result.to_dict()
    if json_out is not None:
        try:
            json_out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise click.UsageError(f"cannot write '{json_out}' ({exc.strerror}); pick another --json") from None
    click.echo(json.dumps(data, indent=2) if fmt == "json" else markdown(result, str(base), str(new)), nl=False)
    if fmt == "json":
        click.echo()
    sys.stdout.flush()
    sys.exit(result.exit_code)


if __name__ == "__main__":
    main()
