"""Real vLLM (the CPU build from `make vllm-cpu`) launched through the launcher.

One server for the module: start-up costs about a minute of Python imports on
two cores. The checks are the ones a benchmark depends on: the server counts
prompt tokens exactly as our bundled DeepSeek-R1 tokenizer does (raw text and
chat template), loadgen's completions and chat runs succeed with exact lengths,
and stopping leaves no process behind.
"""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher import vllm_cpu
from loadgen import prefix_cache
from loadgen.client import Target, check_stream
from loadgen.records import Prompt
from loadgen.store import read_requests
from loadgen.telemetry.page import parse_page
from tests.conftest import REPO_ROOT
from tests.real_vllm import MARKS, SERVED

pytestmark = MARKS

MODEL_DIR = vllm_cpu.default_model_dir()
TEXTS = [
    "Hello world, how are you?",
    "DeepSeek-R1 是一个推理模型。它会先思考，再回答。",
    "def f(x):\n    return x ** 2  # 平方\n\n\tTabs, emoji 🚀 and numbers 1234567890.",
]


def post(base_url: str, path: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(base_url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def test_real_failed_start_is_diagnosed_and_cleaned_up(tmp_path: Path) -> None:
    """A start that real vLLM rejects during config validation: fast, diagnosed, nothing left."""
    from launcher.lifecycle import LaunchError, launch

    with pytest.raises(LaunchError) as info:
        launch("vllm", preset="tiny-cpu", extra_args=["--max-model-len", "100000"], log_path=tmp_path / "bad.log",
               ready_timeout_s=300)
    assert info.value.signature == "vllm_max_model_len_above_model"
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in str(info.value)
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _environ_mentions(p, str(tmp_path))]
    assert leftovers == [], "a process of the failed start survived"


def _environ_mentions(proc_dir: Path, text: str) -> bool:
    try:
        environ = (proc_dir / "environ").read_bytes()
    except OSError:
        return False
    return text.encode() in environ


@pytest.fixture(scope="module")
def server(vllm_server):
    return vllm_server


@pytest.fixture(scope="module")
def tokenizer():
    from loadgen.workload.tokenizer import load_tokenizer

    return load_tokenizer(str(MODEL_DIR))


def test_models_endpoint(server) -> None:
    with urllib.request.urlopen(server.base_url + "/v1/models", timeout=30) as resp:
        data = json.loads(resp.read())
    assert [m["id"] for m in data["data"]] == [SERVED]
    assert server.cleanup and len(str(server.cleanup[0])) <= vllm_cpu.MAX_TMPDIR_LEN


def test_tokenize_agrees_with_bundled_tokenizer(server, tokenizer) -> None:
    for text in TEXTS:
        ours = tokenizer.encode(text, add_special_tokens=False)
        theirs = post(server.base_url, "/tokenize", {"model": SERVED, "prompt": text, "add_special_tokens": False})
        assert theirs["tokens"] == ours, text
    messages = [{"role": "user", "content": TEXTS[1]}]
    ours = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    theirs = post(server.base_url, "/tokenize", {"model": SERVED, "messages": messages, "add_generation_prompt": True})
    assert theirs["tokens"] == list(ours)
    # The original R1 template adds exactly BOS, <｜User｜> and <｜Assistant｜>.
    assert len(ours) == len(tokenizer.encode(TEXTS[1], add_special_tokens=False)) + 3


def test_usage_counts_match(server, tokenizer) -> None:
    text = TEXTS[2]
    body = {"model": SERVED, "prompt": text, "max_tokens": 4, "ignore_eos": True, "temperature": 0}
    out = post(server.base_url, "/v1/completions", body)
    raw = len(tokenizer.encode(text, add_special_tokens=False))
    added = out["usage"]["prompt_tokens"] - raw
    assert added in (0, 1), "the server adds at most a BOS to a raw prompt"
    assert out["usage"]["completion_tokens"] == 4


def _loadgen(server, out_dir: Path, backend: str) -> dict:
    argv = [sys.executable, "-c", "from loadgen.cli import main; main()", "--base-url", server.base_url,
            "--backend", backend, "--model", SERVED, "--tokenizer", str(MODEL_DIR), "--input-len", "64",
            "--output-len", "16", "--num-prompts", "8", "--concurrency", "4", "--output-dir", str(out_dir),
            "--save-requests", "--no-progress"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    files = [f for f in glob.glob(str(out_dir / "*.json"))]
    assert len(files) == 1, files
    return json.loads(Path(files[0]).read_text())


@pytest.mark.parametrize("backend", ["openai", "openai-chat"])
def test_loadgen_run_exact_lengths(server, tmp_path: Path, backend: str) -> None:
    result = _loadgen(server, tmp_path, backend)
    assert result["completed"] == 8 and result["failed"] == 0
    assert result["total_input_tokens"] == 8 * 64
    assert result["total_output_tokens"] == 8 * 16
    if "prompt_token_mismatches" in result:
        assert result["prompt_token_mismatches"] == 0
    # Per request: the server's own usage.prompt_tokens equals the length we built.
    rows = read_requests(tmp_path / result["per_request"]["requests"])
    checked = rows[rows["server_prompt_tokens"] >= 0]
    assert len(checked), "the server reported usage for no request"
    assert (checked["server_prompt_tokens"] == 64).all() and (checked["input_len"] == 64).all()


PARSE_SCRIPT = r"""
import contextlib, io, json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser
out = []
for argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        out.append("ok")
    except SystemExit:
        out.append(err.getvalue().strip().splitlines()[-1])
print(json.dumps(out))
"""


def _engine_args(argv: list[str]) -> list[str]:
    """`vllm serve MODEL --flags` (or `python -m ...api_server --model MODEL`) → parser input."""
    if "serve" in argv:
        i = argv.index("serve")
        return ["--model", argv[i + 1], *argv[i + 2 :]]
    return argv[argv.index("--model") :]


def test_real_vllm_parser_accepts_the_translated_preset() -> None:
    """The field report's 0.8.2 command is rejected by a current vLLM; our translation is accepted."""
    from launcher.plan import build_plan

    installed = vllm_cpu.installed_version(vllm_cpu.default_venv(), "vllm-cpu")
    current = build_plan("vllm", version=installed, preset="deepseek-r1-fp8-tp8-h20", host_facts=("", ""))
    original = build_plan("vllm", version="0.8.2", preset="deepseek-r1-fp8-tp8-h20", host_facts=("", ""))
    assert "--enable-reasoning" in original.argv and "--enable-reasoning" not in current.argv
    batch = [_engine_args(current.argv), _engine_args(original.argv)]
    res = subprocess.run([str(vllm_cpu.venv_python(vllm_cpu.default_venv())), "-c", PARSE_SCRIPT],
                         input=json.dumps(batch), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    verdicts = json.loads(res.stdout.strip().splitlines()[-1])
    assert verdicts[0] == "ok", verdicts[0]
    assert "unrecognized arguments" in verdicts[1] or "ignored explicit argument" in verdicts[1], verdicts[1]


def test_server_metrics_scraped_during_a_run_and_drawn(server, tmp_path: Path) -> None:
    """vLLM's own /metrics during a run: every stream shows up as running, and the report draws it."""
    argv = [sys.executable, "-c", "from loadgen.cli import main; main()", "--base-url", server.base_url,
            "--model", SERVED, "--tokenizer", str(MODEL_DIR), "--input-len", "64", "--output-len", "128",
            "--num-prompts", "24", "--concurrency", "8", "--metrics-interval", "0.25", "--output-dir",
            str(tmp_path), "--save-requests", "--no-progress", "--label", "vllm-cpu"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    (path,) = tmp_path.glob("*.json")
    sm = json.loads(path.read_text())["server_metrics"]
    assert sm["engine"] == "vllm" and sm["vllm_names"] == "current names"
    # a scrape has a deadline (it must never hold up the run); a busy CPU server can miss one, not most
    assert sm["failed_scrapes"] < sm["scrapes"], sm
    assert sm["names"]["running"] == "vllm:num_requests_running"
    # sampled every 0.25 s, each scrape under a deadline: within the concurrency whenever seen (a busy CPU
    # server can answer every in-run scrape late); the counters below are the exact claims
    assert 0 <= sm["summary"]["running_max"] <= 8
    assert sm["summary"]["generation_tokens"] == 24 * 128  # counters: exact totals at any speed
    assert sm["server_latency"]["ttft"]["count"] == 24
    assert len(sm["timeline"]["t_s"]) >= 2  # before the start and after the end, however short the run

    from analysis.load import load
    from analysis.report import write_report

    report = write_report(load(tmp_path), tmp_path / "report")
    assert [p.name for p in report.plots if p.name.startswith("timeline_")] == ["timeline_vllm-cpu_c8_64x128.png"]
    assert "server mean TTFT(ms)" in report.summary_csv.read_text().splitlines()[0]


def test_real_capacity_search_answers_with_an_interval(server, tmp_path: Path) -> None:
    """A short concurrency search against real vLLM: an answer, its interval, every probe on disk."""
    import time

    from rich.console import Console

    from loadgen.config import RunConfig
    from loadgen.search.method import SearchSpec, parse_slo
    from loadgen.search.probes import run_search

    cfg = RunConfig.from_flat(base_url=server.base_url, tokenizer="deepseek-r1", input_len=32, output_len=24, duration_s=4.0,
                    warmup_s=1.0, output_dir=str(tmp_path), num_prompts=64, progress=False, label="vllm-cpu")
    spec = SearchSpec("concurrency", (parse_slo("tpot:p99<=40"),), start=4, low=1, high=64, tolerance=0.25,
                      boundary_repeats=2, max_probes=9)
    started = time.monotonic()
    outcome = run_search(cfg, spec, console=Console(quiet=True))
    took = time.monotonic() - started
    rec = outcome.record
    assert rec["status"] in ("found", "above_max", "max_probes"), rec["probes"]
    low, high = rec["interval"]
    assert rec["capacity"] is not None and low is not None and high is not None
    assert low <= rec["capacity"] <= high
    assert all((tmp_path / p["file"]).is_file() for p in rec["probes"])
    assert json.loads(outcome.path.read_text())["capacity"] == rec["capacity"]
    assert took < 120, took


@pytest.mark.parametrize("backend", ["openai", "openai-chat"])
def test_mooncake_replay_shares_exactly_the_shared_blocks(server, tokenizer, tmp_path: Path, backend: str) -> None:
    """A Mooncake-style trace against real vLLM: the server counts every prompt as built, a row beyond its
    max_model_len is skipped, and vLLM's own tokenizer finds exactly the shared blocks shared."""
    from loadgen.workload import WorkloadSpec, build_trace
    from loadgen.workload.replay import ReplayOptions
    from tests.loadgen.conftest import shared_leading

    block = 64
    rows = [([1, 2, 3], 180), ([1, 2, 4, 5], 250), ([1, 6], 100), ([9, 10], 128), ([1, 2, 3, 11], 200),
            (list(range(100, 140)), 2500)]  # the last: beyond the tiny model's 2,048-token context
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps({"timestamp": 50 * i, "input_length": n, "output_length": 8, "hash_ids": ids})
                             + "\n" for i, (ids, n) in enumerate(rows)))
    argv = [sys.executable, "-c", "from loadgen.cli import main; main()", "--base-url", server.base_url,
            "--backend", backend, "--model", SERVED, "--tokenizer", str(MODEL_DIR), "--dataset-name", "mooncake",
            "--dataset-path", str(trace), "--block-size", str(block), "--output-dir", str(tmp_path / "out"),
            "--no-progress"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    (path,) = (tmp_path / "out").glob("*.json")
    result = json.loads(path.read_text())
    assert result["trace"]["skipped_too_long"] == 1
    assert result["completed"] == len(rows) - 1
    assert result["prompt_token_mismatches"] == 0 and result["prompt_tokens_checked"] == len(rows) - 1
    # the same prompts, counted by vLLM's /tokenize: shared hash ids are shared tokens, no more
    spec = WorkloadSpec(dataset="mooncake", dataset_path=str(trace), chat=backend == "openai-chat",
                        tokenizer=str(MODEL_DIR), block_size=block)
    prompts = build_trace(spec, ReplayOptions(), tokenizer, max_model_len=2048).prompts
    ids = []
    for p in prompts:
        body = {"model": SERVED, "messages": p.messages, "add_generation_prompt": True} if p.messages \
            else {"model": SERVED, "prompt": p.text}
        ids.append(post(server.base_url, "/tokenize", body)["tokens"])
        assert len(ids[-1]) == p.input_len
    tail = shared_leading(ids[0][::-1], ids[3][::-1])
    for a in range(len(ids)):
        for b in range(a):
            k = shared_leading(rows[a][0], rows[b][0])
            if k:
                shorter = min(len(ids[a]), len(ids[b]))
                want = min(k * block, shorter) - (tail if k * block >= shorter else 0)
                assert shared_leading(ids[a], ids[b]) == want, (a, b)


# ---------------------------------------------------------------- prefix caching (the server runs with
# VLLM_SERVER_DEV_MODE=1, which serves POST /reset_prefix_cache; the tiny-cpu preset asks for prompt
# token details): cached tokens per request through loadgen's own client, the server's hit counter moving
# by the same amount, the reset route, and a whole run whose client and server hit rates agree.

PREFIX = " ".join(f"Paragraph {i}: the scheduler batches requests and shares their cached prefixes." for i in range(40))


def counters(base_url: str) -> tuple[float, float]:
    """(prefix_cache_hits, prefix_cache_queries) summed over the page's label sets."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=30) as resp:
        page = parse_page(resp.read().decode())
    return (sum(page.values.get("vllm:prefix_cache_hits_total", [0.0])),
            sum(page.values.get("vllm:prefix_cache_queries_total", [0.0])))


def settled_counters(base_url: str, hits_wanted: float) -> tuple[float, float]:
    """The counters once the hits reach ``hits_wanted`` (the engine publishes them a step
    after the response); at most 40 reads over about 20 s."""
    hits, queries = counters(base_url)
    for _ in range(40):
        if hits >= hits_wanted:
            break
        time.sleep(0.5)
        hits, queries = counters(base_url)
    return hits, queries


def test_second_request_reports_cached_tokens_and_the_hit_counter_agrees(server) -> None:
    target = Target(base_url=server.base_url, backend="vllm", model=SERVED, ignore_eos=True)
    hits0, queries0 = counters(server.base_url)
    first = check_stream(target, Prompt(id=0, input_len=0, output_len=4, text=PREFIX + " Question one?"))
    second = check_stream(target, Prompt(id=1, input_len=0, output_len=4, text=PREFIX + " Question two?"))
    assert first.cached_tokens == 0  # reported, and zero: the cache was cold for this text
    assert second.cached_tokens is not None and second.cached_tokens > 0
    assert second.cached_tokens < second.server_prompt_tokens
    hits, queries = settled_counters(server.base_url, hits0 + second.cached_tokens)
    assert hits - hits0 == first.cached_tokens + second.cached_tokens
    assert queries - queries0 == first.server_prompt_tokens + second.server_prompt_tokens

    # the reset empties it: the same text misses again
    outcome = prefix_cache.reset(server.base_url)
    assert outcome == {"ok": True, "route": "/reset_prefix_cache", "status": 200, "message": None}
    again = check_stream(target, Prompt(id=2, input_len=0, output_len=4, text=PREFIX + " Question two?"))
    assert again.cached_tokens == 0

    # --cache-salt's body field: the same, now cached, text under a salt finds nothing; a second
    # request under that salt finds the first's blocks
    salted = Target(base_url=server.base_url, backend="vllm", model=SERVED, ignore_eos=True,
                    extra_body={"cache_salt": "run-2"})
    same = Prompt(id=3, input_len=0, output_len=4, text=PREFIX + " Question two?")
    assert check_stream(salted, same).cached_tokens == 0
    assert check_stream(salted, same).cached_tokens > 0


def test_a_shared_prefix_run_agrees_with_the_servers_counters(server, tmp_path: Path, monkeypatch) -> None:
    from loadgen.cli import main

    monkeypatch.setenv("LOADGEN_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, [
        "--base-url", server.base_url, "--backend", "vllm", "--tokenizer", str(vllm_cpu.default_model_dir()),
        "--num-prompts", "24", "--concurrency", "4", "--input-len", "256", "--output-len", "4",
        "--prefix-len", "160", "--num-prefixes", "2", "--reset-prefix-cache", "--no-progress",
        "--metrics-interval", "0.2", "--output-dir", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (path,) = out.glob("*.json")
    cache = json.loads(path.read_text())["prefix_cache"]
    assert cache["reset"]["ok"] is True
    assert cache["client"]["requests_reported"] == 24 and cache["client"]["hit_rate"] > 0.3
    assert cache["server"] is not None
    assert abs(cache["client"]["hit_rate"] - cache["server"]["hit_rate"]) < 0.01


@pytest.mark.parametrize("history", ["live", "recorded"])
def test_three_turn_sessions_count_exactly(server, tmp_path: Path, history: str) -> None:
    """Every turn of a session carries the conversation so far (live: the tiny model's own
    replies); the server's usage.prompt_tokens equals the length loadgen expected for each."""
    argv = [sys.executable, "-c", "from loadgen.cli import main; main()", "--base-url", server.base_url,
            "--backend", "openai-chat", "--model", SERVED, "--tokenizer", str(MODEL_DIR),
            "--dataset-name", "sessions", "--num-prompts", "3", "--session-turns", "3",
            "--turn-input-len", "24", "--turn-output-len", "12", "--system-prompt-len", "32",
            "--history", history, "--concurrency", "3", "--session-header", "X-Session-Id",
            "--output-dir", str(tmp_path), "--no-progress"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert result["completed"] == 9 and result["sessions"]["completed"] == 3
    rows = read_requests(tmp_path / result["per_request"]["requests"])
    assert sorted(zip(rows["session"].tolist(), rows["turn"].tolist(), strict=True)) == \
        [(s, t) for s in range(3) for t in range(3)]
    assert (rows["server_prompt_tokens"] == rows["input_len"]).all(), rows[["turn", "input_len", "server_prompt_tokens"]]
    assert result["prompt_token_mismatches"] == 0
