"""Every option of ``loadgen`` is declared once, in loadgen/options.py, and all its uses follow from there.

The command's click parameters, the flat mapping to RunConfig fields, the set-by
tracking of ``--config`` overrides and the ``--config`` file form are each compared
with the table; a source scan fails on a click option declared by hand anywhere else.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import click
import pytest

from loadgen import options
from loadgen.cli import config_from_options, explicit_options, main
from loadgen.config import PART_OF, PARTS, RunConfig
from loadgen.config_file import flat_from_form, read, to_form
from loadgen.search.cli import CHOSEN_BY_SEARCH
from loadgen.search.cli import main as search_main
from tests.conftest import REPO_ROOT

OWN = ("version", "help")  # click's own, on every command
FIELDS = set(RunConfig().flat()) - {"basic_auth"}  # basic_auth: taken out of --base-url, never an option


def spellings(o: options.Option) -> set[str]:
    return {o.flag, *o.aliases, *((o.negation,) if o.negation else ())}


def test_the_commands_parameters_are_the_tables_rows() -> None:
    params = [p for p in main.params if p.name not in OWN]
    assert [p.name for p in params] == [o.name for o in options.OPTIONS]
    for p, o in zip(params, options.OPTIONS, strict=True):
        assert isinstance(p, click.Option) and {*p.opts, *p.secondary_opts} == spellings(o), o.flag
    everywhere = [s for o in options.OPTIONS for s in spellings(o)]
    assert len(everywhere) == len(set(everywhere)), "a spelling belongs to two options"
    # loadgen search: the table's rows but the load (which it chooses), plus its own options
    reused = {p.name for p in search_main.params if p.name in options.BY_NAME}
    assert reused == set(options.BY_NAME) - {*CHOSEN_BY_SEARCH, "config_file", "result_filename"}
    own = [p for p in search_main.params if p.name not in options.BY_NAME and p.name not in OWN]
    assert own and not {o for p in own for o in p.opts} & set(everywhere)


def test_fields_set_by_and_file_form_are_exactly_the_tables() -> None:
    fielded = {o.field_name for o in options.OPTIONS if o.field_name is not None}
    assert fielded == FIELDS  # every field has one option whose value it is
    keyed = [o.field_name for o in options.OPTIONS if o.field_name is not None]
    assert len(keyed) == len(set(keyed)), "two options claim the same field"
    ctx = main.make_context("loadgen", [])
    assert set(options.flat_from_options(ctx.params)) == FIELDS
    assert set(options.SET_BY) == FIELDS
    assert {n for names in options.SET_BY.values() for n in names} <= set(options.BY_NAME)
    assert {f for fields, _ in options.RULES for f in fields} == {
        f for o in options.OPTIONS for f in o.sets}, "a field several options decide needs a rule"
    form = {(section, key): field for section, keys in options.FORM.items() for key, field in keys.items()}
    assert set(options.FORM) == set(PARTS) and options.TOP_LEVEL == {"seed": "seed"}
    assert {field for field in form.values()} == FIELDS - {"api_key", "seed"}  # the API key is never in a file
    for (section, key), field in form.items():
        assert PART_OF[field] == section and options.BY_FIELD[field].key == key


def test_no_click_option_is_declared_outside_the_table() -> None:
    """A click option with one of the table's spellings, written anywhere else in loadgen/, is a second declaration."""
    table = {s for o in options.OPTIONS for s in spellings(o)}
    found = []
    for path in sorted((REPO_ROOT / "loadgen").rglob("*.py")):
        if path.name == "options.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "option", "Option", "_opt"):
                words = [a.value for a in ast.walk(node) if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                found += [f"{path.relative_to(REPO_ROOT)}:{node.lineno} {w}" for w in words
                          if w.split("/")[0] in table]
    assert not found, f"options declared outside loadgen/options.py: {found}"


def test_the_tables_defaults_are_the_configurations() -> None:
    ctx = main.make_context("loadgen", [])
    assert config_from_options(ctx.params, explicit_options(ctx)) == RunConfig()


def _configs() -> list[RunConfig]:
    """Configurations that, between them, give every field of the file form a value other than its default."""
    common = dict(model="m", tokenizer="deepseek-r1", timeout_s=30.0, extra_body={"temperature": 0}, seed=3,
                  num_prompts=7, output_dir="out", result_filename="{rate}-{concurrency}-{repeat}.json",
                  save_requests=True, save_text=True, inline_requests=5, percentiles=[50.0, 99.9],
                  goodput_slos_ms={"ttft": 500.0}, label="x", metadata={"gpu": "H20"}, progress=False,
                  server_metrics="off", metrics_interval_s=0.5, gpu_metrics="off", grace_s=1.0, workers=2)
    random_prompts = RunConfig.from_flat(
        **common, base_url="https://127.0.0.1:9", endpoint="/v1/chat/completions", backend="openai-chat",
        ca_cert="ca.pem", reset_prefix_cache=True, cache_salt="s", cache_salt_mode="prefix",
        chat_template_kwargs={"enable_thinking": False}, input_len=64, output_len=9, output_len_fixed=True,
        range_ratio=0.5, prefix_len=8, num_prefixes=2, input_len_counts="content", verify_prompts=False,
        ignore_eos=False, rates=[1.0, math.inf], arrival="gamma", burstiness=2.0, concurrencies=[2, 4],
        duration_s=10.0, warmup=3, warmup_s=1.0, repeat=5, repeat_width=0.05, repeat_metrics=("output_throughput",))
    sessions = RunConfig.from_flat(
        **common, base_url="http://127.0.0.1:9", backend="openai-chat", dataset="sessions", session_turns="uniform:2:4",
        turn_input_len="16", turn_output_len="8", system_prompt_len="32", think_time="exponential:1",
        history="recorded", session_header="X-Session-Id", insecure=False)
    trace = RunConfig.from_flat(
        **common, base_url="https://127.0.0.1:9", insecure=True, dataset="mooncake", dataset_path="t.jsonl",
        block_size=16, trace_speedup=2.0, trace_start_s=1.0, trace_end_s=9.0, trace_max_gap_s=3.0,
        trace_timing="order", trace_too_long="shorten", concurrencies=[4])
    return [random_prompts, sessions, trace]


def test_the_file_form_round_trips_every_option() -> None:
    default = RunConfig().flat()
    covered = set()
    for cfg in _configs():
        again = RunConfig.from_flat(**flat_from_form(to_form(cfg), "x"))
        assert again == cfg
        covered |= {k for k, v in cfg.flat().items() if v != default[k]}
    # Ray is an optional extra (a RunConfig with --ray-address needs it installed): its keys at the form level
    assert flat_from_form({"schedule": {"ray-address": "auto", "workers": 0}}, "x") == {
        "ray_address": "auto", "workers": 0}
    covered.add("ray_address")
    every = {f for keys in options.FORM.values() for f in keys.values()} | set(options.TOP_LEVEL.values())
    assert not every - covered, f"give these fields a value in _configs(): {sorted(every - covered)}"


def test_a_file_with_the_tokenizer_under_target_still_reads(tmp_path: Path) -> None:
    """Result files written before the tokenizer moved to the workload part keep reproducing their run."""
    old = tmp_path / "old.toml"
    old.write_text('[target]\ntokenizer = "deepseek-r1"\n')
    assert read(str(old)) == {"tokenizer": "deepseek-r1"}
    assert to_form(RunConfig.from_flat(**read(str(old))))["workload"]["tokenizer"] == "deepseek-r1"


def test_tokenizer_default_is_the_model_when_it_is_a_local_folder(tmp_path: Path) -> None:
    cfg = RunConfig()
    assert cfg.workload.tokenizer_for(str(tmp_path)) == str(tmp_path)
    assert cfg.workload.tokenizer_for("deepseek-ai/DeepSeek-R1") is None
    given = dataclasses.replace(cfg.workload, tokenizer="deepseek-r1")
    assert given.tokenizer_for(str(tmp_path)) == "deepseek-r1"


def test_help_lists_every_visible_option_once_under_its_part() -> None:
    r = subprocess.run([sys.executable, "-m", "loadgen.cli", "--help"], capture_output=True, text=True, timeout=60,
                       env={"COLUMNS": "200", "PATH": ""}, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr
    headings = [line[:-1] for line in r.stdout.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert [h for h in headings if h in options.GROUPS] == list(options.GROUPS)
    lines = r.stdout.splitlines()
    for o in options.OPTIONS:
        starts = [line for line in lines if line.strip().startswith((f"{o.flag} ", f"{o.flag},", f"{o.flag}/"))]
        assert len(starts) == (0 if o.hidden else 1), o.flag


@pytest.mark.parametrize("name", ["duration_s", "warmup_s"])
def test_search_changes_only_what_a_probe_means(name: str) -> None:
    ours = next(p for p in main.params if p.name == name)
    theirs = next(p for p in search_main.params if p.name == name)
    assert ours.opts == theirs.opts and ours.help != theirs.help
