"""Every benchmark flag of vLLM and SGLang is accepted by ``loadgen`` with its meaning, or refused in one line.

The flag lists are the tools' real ones: ``vllm bench serve``'s parser read in vLLM's
side venv (``make vllm-cpu``), SGLang's ``bench_serving`` source in its side venvs
(``make sglang-parser``), and vLLM 0.8.2's ``benchmark_serving.py`` from a stored list
(tests/fixtures/peer_flags/). A flag an upstream release adds fails here until
loadgen declares it or loadgen/peer_flags.py has a row for it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from launcher import vllm_cpu
from launcher.engines import sglang_parser
from loadgen import peer_flags
from loadgen.cli import main
from tests.conftest import FIXTURES

HERE = Path(__file__).resolve().parent
STORED = FIXTURES / "peer_flags" / "vllm-0.8.2-benchmark_serving.json"
PROBE = HERE / "peer_flags_probe.py"


def loadgen_options() -> dict[str, bool]:
    """loadgen's own option names (aliases included) → whether it takes a value."""
    names: dict[str, bool] = {}
    for p in main.params:
        if isinstance(p, click.Option):
            for name in (*p.opts, *p.secondary_opts):
                names[name] = not p.is_flag
    return names


def sglang_flags(venv: Path) -> dict[str, bool]:
    """The ``add_argument`` calls of SGLang's bench_serving source (0.5 moved it to sglang.benchmark.serving).

    Read from the source: the module imports GPU packages a side venv never has."""
    site = sorted((venv / "lib").glob("python3*/site-packages/sglang"))[0]
    flags: dict[str, bool] = {}
    for path in (site / "bench_serving.py", site / "benchmark" / "serving.py"):
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                action = next((k.value.value for k in node.keywords
                               if k.arg == "action" and isinstance(k.value, ast.Constant)), None)
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
                        flags[arg.value] = action not in ("store_true", "store_false")
    return flags


def vllm_flags(venv: Path) -> dict[str, bool]:
    done = subprocess.run([str(vllm_cpu.venv_python(venv)), "-I", str(PROBE)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["flags"]


def peer_lists() -> list:
    lists = [pytest.param(lambda: json.loads(STORED.read_text())["flags"], id="vllm-0.8.2-benchmark_serving")]
    venv = vllm_cpu.default_venv()
    version = vllm_cpu.installed_version(venv, "vllm") if venv.exists() else None
    # importing real vLLM takes half a minute: with the other real-vLLM tests (`make test`, not `make test-fast`)
    lists.append(pytest.param(lambda: vllm_flags(venv), id=f"vllm-{version}-bench-serve", marks=[pytest.mark.vllm,
        pytest.mark.skipif(version is None, reason="no vLLM side venv: run `make vllm-cpu`")]))
    sglang = [v for v in sorted(sglang_parser.project_root().glob(".venv-sglang*")) if sglang_parser.installed_version(v)]
    for v in sglang:
        lists.append(pytest.param(lambda v=v: sglang_flags(v), id=f"sglang-{sglang_parser.installed_version(v)}"))
    if not sglang:
        lists.append(pytest.param(None, id="sglang", marks=pytest.mark.skip(
            reason="no SGLang side venv: run `make sglang-parser`")))
    return lists


@pytest.mark.parametrize("read_flags", peer_lists())
def test_every_peer_flag_is_declared_translated_or_refused(read_flags) -> None:
    flags = read_flags()
    assert len(flags) > 30  # the list was really read
    ours = loadgen_options()
    unknown, arity = [], []
    for flag, takes_value in flags.items():
        if flag in ours:
            # a loadgen option of the same name parses the same words
            if flag not in peer_flags.BY_NAME and ours[flag] != takes_value:
                arity.append(flag)
        elif flag in peer_flags.BY_NAME:
            if peer_flags.BY_NAME[flag].takes_value != takes_value:
                arity.append(flag)
        else:
            unknown.append(flag)
    assert not unknown, f"peer flags neither declared by loadgen nor in loadgen/peer_flags.py: {unknown}"
    assert not arity, f"flags whose value-taking differs from the peer tool's: {arity}"


def test_accepted_rows_rewrite_into_loadgen_options_and_refused_rows_name_the_way() -> None:
    ours = loadgen_options()
    for row in peer_flags.TABLE:
        assert (row.to is None) != (row.refuse is None), row.names
        if row.to:
            assert row.to[0] in ours and all(part == "{value}" or "{value}" not in part or "=" in part
                                             for part in row.to), row
        for name in row.names:
            assert name not in ours, f"{name} is a loadgen option and a table row"
            if row.refuse is not None:
                with pytest.raises(peer_flags.PeerFlagError) as caught:
                    peer_flags.translate([name, "1"] if row.takes_value else [name])
                line = str(caught.value)
                assert "\n" not in line and line.startswith(f"{name}: ") and row.refuse.split("{")[0] in line


def test_peer_values_name_loadgen_choices() -> None:
    choices = {o: p.type.choices for p in main.params if isinstance(p.type, click.Choice) for o in p.opts}
    for flag, mapping in peer_flags.VALUES.items():
        assert set(mapping.values()) <= set(choices[flag]) and not set(mapping) & set(choices[flag]), flag


def test_translation_rewrites_flags_values_and_leaves_loadgen_words_alone() -> None:
    t = peer_flags.translate
    assert t(["--disable-tqdm", "--percentile-metrics", "ttft,tpot", "--num-prompts", "4"]) == [
        "--no-progress", "--num-prompts", "4"]
    assert t(["--mooncake-slowdown-factor=2", "--tag", "x"]) == ["--trace-speedup", "0.5", "--metadata", "tag=x"]
    assert t(["--self-timed"]) == ["--trace-timing", "trace"]
    assert t(["--no-self-timed"]) == ["--trace-timing", "order"]
    # SGLang's backend names; a value of a loadgen option is never read as a flag
    assert t(["--backend", "sglang-oai-chat", "--backend=sglang-native"], {"--backend"}) == [
        "--backend", "openai-chat", "--backend=sglang"]
    assert t(["--label", "--disable-tqdm"], {"--label"}) == ["--label", "--disable-tqdm"]
    for bad, why in ((["--percentile-metrics", "ttft,latency"], "unknown metric 'latency'"),
                     (["--mooncake-slowdown-factor", "0"], "greater than 0"),
                     (["--extra-request-body"], "needs a value"),
                     (["--disable-tqdm=1"], "takes no value")):
        with pytest.raises(peer_flags.PeerFlagError, match=why):
            t(bad)


def run_loadgen(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadgen.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_the_field_reports_vllm_command_runs_against_the_sim(sim_fast, tmp_path: Path) -> None:
    r = run_loadgen("--backend", "vllm", "--base-url", sim_fast.base_url, "--model", "deepseek-r1",
                    "--tokenizer", "deepseek-r1", "--dataset-name", "random", "--random-input-len", "32",
                    "--random-output-len", "8", "--num-prompts", "12", "--max-concurrency", "4",
                    "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
                    "--save-result", "--save-detailed", "--disable-tqdm", "--trust-remote-code",
                    "--result-dir", str(tmp_path), "--result-filename", "vllm-style.json",
                    "--metadata", "gpu=none", "tp=1", "--seed", "3", "--ignore-eos")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "vllm-style.json").read_text())
    assert res["completed"] == 12 and res["max_concurrency"] == 4 and res["output_lens"] == [8] * 12
    assert res["percentiles"] == [50.0, 99.0] and "p50_itl_ms" in res and "p99_e2el_ms" in res
    assert res["metadata"] == {"gpu": "none", "tp": "1"} and res["seed"] == 3
    assert res["generated_texts"] and len(res["generated_texts"]) == 12  # --save-detailed kept the texts
    assert "━" not in r.stderr  # --disable-tqdm: no live progress


def test_the_sglang_command_shape_runs_against_the_sim(sim_fast, tmp_path: Path) -> None:
    r = run_loadgen("--backend", "sglang-native", "--base-url", sim_fast.base_url, "--tokenizer", "deepseek-r1",
                    "--dataset-name", "random", "--random-input-len", "32", "--random-output-len", "8",
                    "--num-prompts", "6", "--request-rate", "inf", "--max-concurrency", "2",
                    "--warmup-requests", "1", "--disable-ignore-eos", "--disable-tqdm", "--output-details",
                    "--extra-request-body", '{"temperature": 0}', "--tag", "nightly",
                    "--output-file", "sglang-style.json", "--result-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "sglang-style.json").read_text())
    assert res["completed"] == 6 and res["ignore_eos"] is False and res["warmup_requests"] == 1
    assert res["metadata"] == {"tag": "nightly"} and res["backend"] == "sglang"


def test_sharegpt_output_len_fixes_every_requests_length(sim_fast, tmp_path: Path) -> None:
    sharegpt = FIXTURES / "workload" / "sharegpt_small.json"
    r = run_loadgen("--backend", "vllm", "--base-url", sim_fast.base_url, "--tokenizer", "deepseek-r1",
                    "--dataset-name", "sharegpt", "--dataset-path", str(sharegpt), "--sharegpt-output-len", "5",
                    "--ignore-eos", "--num-prompts", "6", "--max-concurrency", "3", "--disable-tqdm",
                    "--result-dir", str(tmp_path), "--result-filename", "sharegpt.json")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "sharegpt.json").read_text())
    assert res["completed"] == 6 and res["output_lens"] == [5] * 6
    assert res["run_config"]["workload"]["fixed-output-len"] is True


@pytest.mark.parametrize("args, names", [
    (["--temperature", "0.7"], """--extra-body '{"temperature": 0.7}'"""),
    (["--return-logprob"], """--extra-body '{"return_logprob": true}'"""),
    (["--disable-stream"], "always streams"),
    (["--hf-output-len", "64"], "--dataset-name jsonl"),
])
def test_a_refused_flag_is_one_line_and_exit_2(tmp_path: Path, args: list[str], names: str) -> None:
    r = run_loadgen("--num-prompts", "1", *args, "--result-dir", str(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"loadgen: error: {args[0]}: ") and names in lines[0]
    assert not list(tmp_path.iterdir())  # nothing ran
