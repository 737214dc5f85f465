"""The composed run configuration and its file form (``--config``)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from loadgen.cli import main
from loadgen.config import ConfigError, OutputConfig, RunConfig, ScheduleConfig, TargetConfig, WorkloadConfig
from loadgen.config_file import flat_from_form, to_form
from loadgen.errors import LoadgenError
from loadgen.server_checks import PreflightError, check_files
from tests.conftest import REPO_ROOT
from tests.loadgen.conftest import parsed


def test_parts_are_frozen_and_validated_when_built() -> None:
    cfg = RunConfig.from_flat(input_len=64, rates=[1.0, 2.0], result_filename="{rate}.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.workload.input_len = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.schedule = ScheduleConfig()  # type: ignore[misc]
    assert cfg.schedule.rates == (1.0, 2.0)
    with pytest.raises(ConfigError, match="--repeat"):
        ScheduleConfig(repeat=0)
    with pytest.raises(ConfigError, match="--prefix-len"):
        WorkloadConfig(input_len=8, prefix_len=8)
    with pytest.raises(ConfigError, match=r"add \{rate\}"):
        RunConfig(schedule=ScheduleConfig(rates=(1.0, 2.0)), output=OutputConfig(result_filename="one.json"))


def test_normalisation_returns_new_values() -> None:
    flat = {"base_url": "http://bob:pw@127.0.0.1:9", "burstiness": 0.5}
    cfg = RunConfig.from_flat(**flat)
    assert flat == {"base_url": "http://bob:pw@127.0.0.1:9", "burstiness": 0.5}  # the input is untouched
    assert cfg.target.base_url == "http://127.0.0.1:9" and cfg.target.basic_auth == ("bob", "pw")
    assert cfg.schedule.arrival == "gamma"
    with pytest.raises(ConfigError, match="credentials"):  # the part itself never rewrites its URL
        TargetConfig(base_url="http://bob:pw@127.0.0.1:9")
    with pytest.raises(ConfigError, match="--arrival gamma"):
        ScheduleConfig(burstiness=0.5)


def test_files_are_checked_in_preflight_not_in_the_config(tmp_path: Path) -> None:
    cfg = RunConfig.from_flat(dataset="jsonl", dataset_path=str(tmp_path / "missing.jsonl"))
    with pytest.raises(PreflightError, match="--dataset-path") as err:
        check_files(cfg)
    assert err.value.kind == "preflight" and isinstance(err.value, LoadgenError)
    ca = RunConfig.from_flat(base_url="https://127.0.0.1:1", ca_cert=str(tmp_path / "none.pem"))
    with pytest.raises(PreflightError, match="--ca-cert"):
        check_files(ca)


def test_choices_come_from_the_registries() -> None:
    from loadgen.protocols import BACKENDS
    from loadgen.workload import DATASETS

    params = {p.name: p for p in main.params}
    assert tuple(params["backend"].type.choices) == BACKENDS
    assert tuple(params["dataset"].type.choices) == DATASETS


def test_form_round_trips_without_secrets() -> None:
    cfg = parsed(["--base-url", "http://bob:pw-9f1@127.0.0.1:9", "--rate", "1,inf", "--concurrency", "2,4",
                  "--goodput", "ttft:500", "--metadata", "gpu=H20", "--extra-body", '{"temperature": 0}',
                  "--result-filename", "{rate}-{concurrency}.json", "--burstiness", "2", "--seed", "3"])
    form = to_form(cfg)
    assert "pw-9f1" not in json.dumps(form)
    again = RunConfig.from_flat(**flat_from_form(form, "x"))
    assert again.target.basic_auth is None  # credentials are asked for again, never stored
    assert dataclasses.replace(again, target=dataclasses.replace(again.target, basic_auth=("bob", "pw-9f1"))) == cfg
    assert again.schedule.rates == (1.0, math.inf) and again.schedule.arrival == "gamma"


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('seed = 7\n[workload]\ninput-len = 64\noutput-len = 9\n[schedule]\nrate = [2, "inf"]\n'
                    '[output]\nresult-filename = "{rate}.json"\nmetadata = { gpu = "H20" }\n')
    cfg = parsed(["--config", str(toml), "--output-len", "5"])
    assert cfg.workload.output_len == 5  # given: wins
    assert cfg.workload.input_len == 64 and cfg.seed == 7  # not given: the file's
    assert cfg.schedule.rates == (2.0, math.inf) and cfg.output.metadata == {"gpu": "H20"}
    assert parsed(["--config", str(toml), "--rate", "3"]).schedule.rates == (3.0,)


BAD_FILES = [
    ("run.toml", "[workload\ninput-len = 3\n", "not valid TOML"),
    ("run.toml", "[workload]\ninput-lenn = 3\n", "[workload] input-lenn is unknown"),
    ("run.toml", "[sched]\nrate = 1\n", "unknown section or key 'sched'"),
    ("run.toml", "[target]\napi-key = \"sk-1\"\n", "never read from a file"),
    ("run.toml", "[workload]\ninput-len = \"many\"\n", "input-len must be a whole number"),
    ("run.toml", "[workload]\ninput-len = 0\n", "--input-len must be >= 1"),
    ("run.toml", "[schedule]\nrate = [0]\n", "[schedule] rate: --rate must be > 0"),
    ("x.json", '{"completed": 1}', "without 'run_config'"),
    ("missing.toml", None, "cannot be read"),
]


@pytest.mark.parametrize("name,text,needle", BAD_FILES, ids=[b[2] for b in BAD_FILES])
def test_bad_config_file_is_one_line_exit_2(tmp_path: Path, name: str, text: str | None, needle: str) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    r = subprocess.run([sys.executable, "-m", "loadgen.cli", "--config", str(path), "--output-dir",
                        str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_a_result_reproduces_its_run(sim_fast, tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": "sk-secret-4d2a"}
    first = CliRunner().invoke(main, ["--base-url", sim_fast.base_url, "--num-prompts", "6", "--concurrency", "2",
                                      "--input-len", "16", "--output-len", "4", "--tokenizer", "deepseek-r1",
                                      "--seed", "5", "--metadata", "run=a", "--no-progress",
                                      "--output-dir", str(tmp_path / "a")], env=env, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    [path_a] = sorted((tmp_path / "a").glob("*.json"))
    assert "sk-secret-4d2a" not in path_a.read_text()
    second = CliRunner().invoke(main, ["--config", str(path_a), "--output-dir", str(tmp_path / "b")], env=env,
                                catch_exceptions=False)
    assert second.exit_code == 0, second.output
    [path_b] = sorted((tmp_path / "b").glob("*.json"))
    a, b = json.loads(path_a.read_text()), json.loads(path_b.read_text())
    assert a["config"]["output_dir"] != b["config"]["output_dir"]
    for res in (a, b):
        res["config"].pop("output_dir")
        res["run_config"]["output"].pop("output-dir")
    assert a["config"] == b["config"] and a["run_config"] == b["run_config"]
    assert a["config"]["api_key"] == "***" and "api-key" not in a["run_config"]["target"]
    assert b["completed"] == a["completed"] == 6 and b["total_input_tokens"] == a["total_input_tokens"]
