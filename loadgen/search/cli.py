"""``loadgen search`` (also ``loadgen-search``): the highest load that meets every SLO.

It takes every option of ``loadgen`` that describes the target and the workload
(built from the same table, loadgen/options.py, so spellings and checks cannot drift apart), minus
the load itself (``--rate``, ``--concurrency``, ``--repeat``), which the search
chooses, plus its own: what to search over, the SLOs, the bracket's tolerance.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from loadgen import interrupts, options
from loadgen.cli import LoadgenCommand, config_from_options
from loadgen.cli import main as loadgen_main
from loadgen.config import ConfigError
from loadgen.search.method import OVER, SearchError, SearchSpec, parse_slo

# Options of ``loadgen`` the search sets itself.
CHOSEN_BY_SEARCH = ("rate", "concurrency", "repeat", "num_prompts", "repeat_width", "repeat_metrics", "repeat_max")
DEFAULT_DURATION_S = 30.0
DEFAULT_WARMUP_SHARE = 0.2


def _reused_params() -> list[click.Parameter]:
    """loadgen's options (loadgen/options.py) but the load, which the search chooses; each probe's
    duration and warm-up mean a probe's."""
    version = [p for p in loadgen_main.params if p.name == "version"]
    return [*version, *options.click_params(
        skip=frozenset({*CHOSEN_BY_SEARCH, "config_file", "result_filename"}),  # probes: named after --label
        duration_s={"default": DEFAULT_DURATION_S,
                    "help": f"Length of every probe in seconds, warm-up included. [default: {DEFAULT_DURATION_S:g}]"},
        warmup_s={"default": None, "help": "Seconds at the start of every probe left out as warm-up. "
                                            f"[default: {DEFAULT_WARMUP_SHARE:.0%} of --duration]"},
    )]


def _search_params() -> list[click.Parameter]:
    return [
        click.Option(["--over"], type=click.Choice(OVER), default="rate", show_default=True,
                     help="Search over the request rate (open loop, --arrival) or the concurrency (closed loop)."),
        click.Option(["--slo"], multiple=True, required=True,
                     help="An objective over each probe's steady requests: METRIC:STAT<=MS with METRIC ttft, tpot, "
                          "e2el or queue and STAT pNN or mean, e.g. --slo ttft:p99=2000 --slo tpot:p99=50 "
                          "('=' and ':' mean '<=', which needs shell quotes)."),
        click.Option(["--goodput-target", "goodput_target"], type=float, default=None,
                     help="Also require this fraction of steady requests to meet every SLO limit, e.g. 0.95."),
        click.Option(["--start"], type=float, default=None,
                     help="First load probed. [default: 1 req/s or concurrency 1]"),
        click.Option(["--min", "low"], type=float, default=None,
                     help="Lowest load tried before giving up. [default: 0.01 req/s or concurrency 1]"),
        click.Option(["--max", "high"], type=float, default=None,
                     help="Highest load tried; if it passes, capacity is 'at least' it. [default: 100000 req/s or 4096]"),
        click.Option(["--tolerance"], type=float, default=0.1, show_default=True,
                     help="Stop bisecting when the bracket's ends are within this fraction of each other."),
        click.Option(["--boundary-repeats"], type=int, default=3, show_default=True,
                     help="Probes at each end of the final bracket (they give the interval)."),
        click.Option(["--max-probes"], type=int, default=30, show_default=True, help="Bound on the number of probes."),
        click.Option(["--max-error-rate"], type=float, default=0.01, show_default=True,
                     help="A probe with more failed requests than this fraction fails."),
        click.Option(["--base-prompts"], type=int, default=500, show_default=True,
                     help="Distinct prompts built; probes cycle through them."),
    ]


def spec_from_options(opts: dict[str, Any]) -> SearchSpec:
    over = opts["over"]
    rate = over == "rate"
    slos = tuple(parse_slo(part) for item in opts["slo"] for part in item.split(",") if part.strip())
    start = opts["start"] if opts["start"] is not None else 1.0
    low = opts["low"] if opts["low"] is not None else (min(0.01, start) if rate else 1.0)
    high = opts["high"] if opts["high"] is not None else (max(1e5, start) if rate else max(4096.0, start))
    return SearchSpec(over=over, slos=slos, goodput=opts["goodput_target"], start=start, low=low, high=high,
                      tolerance=opts["tolerance"], boundary_repeats=opts["boundary_repeats"],
                      max_probes=opts["max_probes"], max_error_rate=opts["max_error_rate"])


def _run(**opts: Any) -> None:
    """Find the highest load (request rate or concurrency) at which every SLO holds at steady state.

    \b
    Examples:
      loadgen search --slo ttft:p99=2000 --slo tpot:p99=50 --tokenizer deepseek-r1
      loadgen search --over concurrency --slo ttft:p99=2000 --duration 60 --label vllm
      loadgen-search --slo 'e2el:p99<=8000' --goodput-target 0.95 --arrival constant
    """
    try:
        spec = spec_from_options(opts)
        opts = {**opts, "rate": "inf", "concurrency": None, "repeat": 1, "num_prompts": opts["base_prompts"],
                "result_filename": "capacity.json"}
        if opts["warmup_s"] is None:
            opts["warmup_s"] = round(opts["duration_s"] * DEFAULT_WARMUP_SHARE, 3)
        cfg = config_from_options(opts)
        if cfg.workload.is_trace:
            raise ConfigError(f"--dataset-name {cfg.workload.dataset} is a trace with its own arrival times, and a "
                              "search sets the load itself: replay the trace with loadgen (--trace-speedup)")
    except (ConfigError, SearchError) as exc:
        raise click.UsageError(str(exc)) from None
    from rich.console import Console

    from loadgen.search.probes import ServerLost, run_search  # late: cold start, as in loadgen/cli.py
    from loadgen.server_checks import PreflightError

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    interrupts.install()
    try:
        outcome = run_search(cfg, spec, console=console, progress_console=Console(stderr=True))
    except PreflightError as exc:
        raise click.UsageError(str(exc)) from None
    except interrupts.Interrupted as exc:
        click.echo(f"loadgen search: stopped by {exc.name}; the capacity record holds the probes so far", err=True)
        sys.exit(exc.exit_code)
    except ServerLost as exc:
        click.echo(f"loadgen search: {exc}; the capacity record holds the probes before it — check the server "
                   "and run the search again", err=True)
        sys.exit(exc.exit_code)
    if outcome.record["status"] == "below_min":
        sys.exit(1)


main = LoadgenCommand(
    "search",
    prog="loadgen-search",
    callback=_run,
    params=[*_reused_params(), *_search_params()],
    help=_run.__doc__,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
