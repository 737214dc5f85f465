"""The ``loadgen-report`` command: result folders in, a report folder out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from analysis import __version__
from analysis.errors import AnalysisError
from loadgen.cli_errors import OneLineCommand

if TYPE_CHECKING:
    from analysis.report import Report

EPILOG = """\b
Examples:
  loadgen-report results/bench-sim/sim-vllm results/bench-sim/sim-sglang --out report/
  loadgen-report results/ --out report/ --baseline vllm-0.8.2
  loadgen-report vllm_runs/ sglang_runs/serving_benchmark_64_128_128.json --out cmp/

\b
Inputs may be loadgen result JSON, vLLM benchmark_serving / `vllm bench serve`
--save-result JSON, or SGLang bench_serving --output-file JSONL, in any mix.
Folders are searched recursively. Runs are grouped by label (loadgen --label,
else the folder name); every label is compared with the first (or --baseline).
"""


@click.command(cls=OneLineCommand, prog="loadgen-report", deliberate=(AnalysisError,), context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(__version__, prog_name="loadgen-report")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Report folder to write (created if missing).")
@click.option("--baseline", default=None, help="Label to compare the others against (default: the first found).")
@click.option("--title", default="loadgen report", show_default=True, help="Title of report.html.")
@click.option("--exclude-partial", is_flag=True, help="Leave out runs that stopped early.")
@click.option("--gpu-hour-price", type=float, default=None, metavar="USD",
              help="Price of one GPU-hour: adds $/M output tokens and $/M total tokens per point.")
@click.option("--gpus", type=int, default=None, metavar="N",
              help="GPUs per deployment for --gpu-hour-price [default: recorded by the run]")
@click.option("--no-plots", is_flag=True,
              help="Tables only: summary.csv, comparison.md and report.html without figures, in about a second "
                   "(for CI; nothing is drawn).")
def main(paths: tuple[Path, ...], out_dir: Path, baseline: str | None, title: str, exclude_partial: bool,
         gpu_hour_price: float | None, gpus: int | None, no_plots: bool) -> None:
    """Turn result files into summary.csv, comparison.md, plots/ and a self-contained report.html.

    Comparability warnings are printed first, then the conclusions that hold.
    """
    # Heavy imports (pandas, matplotlib) after parsing, so --help and --version stay instant.
    from analysis.capacity import load_capacities, write_capacity_report
    from analysis.load import LoadError, NothingUsable, Skipped, histograms, load
    from analysis.report import write_report

    skipped: list[Skipped] = []
    capacities = load_capacities(paths)
    try:
        runs = load(paths, include_partial=not exclude_partial, skipped=skipped)
        hists = histograms(paths)
    except NothingUsable as exc:
        for item in exc.skipped:
            click.echo(f"loadgen-report: {item.kind} {item}", err=True)
        if capacities.empty:
            raise click.UsageError(f"nothing to report: all {len(exc.skipped)} file(s) found were skipped") from None
        runs = None
    except LoadError as exc:
        if capacities.empty:
            raise click.UsageError(str(exc)) from None
        runs = None
    if runs is not None:
        for item in skipped:  # named before anything else, so that a missing run is never a mystery
            click.echo(f"loadgen-report: {item.kind} {item}", err=True)
        if runs.empty and capacities.empty:
            raise click.UsageError("every run found is partial; drop --exclude-partial or rerun them")
    if gpus is not None and gpu_hour_price is None:
        raise click.UsageError("--gpus is used only with --gpu-hour-price; give both")
    if gpu_hour_price is not None and runs is not None and not runs.empty:
        from analysis.cost import CostError, annotate

        try:
            runs = annotate(runs, gpu_hour_price, gpus)
        except CostError as exc:
            raise click.UsageError(str(exc)) from None
    if not capacities.empty:
        where = Path(out_dir) / "capacity" if runs is not None and not runs.empty else Path(out_dir)
        try:
            files = write_capacity_report(capacities, where, baseline=baseline, title=f"{title} — capacity",
                                          draw=not no_plots)
        except OSError as exc:
            raise click.UsageError(f"cannot write the report into '{where}' ({exc.strerror}); pick another --out") \
                from None
        click.echo(files["comparison_md"].read_text(encoding="utf-8"))
        click.echo(f"{len(capacities)} capacity record(s) (loadgen search) -> {where}: summary.csv, comparison.md, "
                   "report.html")
        if runs is None or runs.empty:
            return
    try:
        report = write_report(runs, out_dir, hists, baseline=baseline, title=title, draw=not no_plots)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.UsageError(f"cannot write the report into '{out_dir}' ({exc.strerror}); pick another --out") from None
    print_summary(report, len(runs))


def print_summary(report: Report, n_runs: int) -> None:
    """Warnings first, then conclusions, then where the files are."""
    echo = click.echo
    for issue in report.issues:
        echo(f"{issue.severity.upper()}: {issue.message}")
    for comp in report.comparisons:
        echo(f"\n{comp.b} (B) vs {comp.a} (A):")
        for c in comp.supported:
            echo(f"  holds: {c.full_text}")
        for c in comp.unsupported:
            echo(f"  not supported: {c.text} (not comparable: {'; '.join(c.caveats)})")
        if not comp.conclusions:
            echo("  no difference holds over two or more consecutive points")
    echo(f"\n{n_runs} runs -> {report.out_dir}: summary.csv, comparison.md, {len(report.plots)} plots, report.html")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
