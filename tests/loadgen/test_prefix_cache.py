"""Prefix caching end to end: the sim's cache, cached tokens per request, hit rates per point,
the warm-cache warning, --reset-prefix-cache and --cache-salt, against real sim servers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from launcher.sim.prefix_cache import PrefixCache
from loadgen import prefix_cache
from loadgen.aggregate import Aggregate
from loadgen.cli import main
from loadgen.records import RequestRecord
from loadgen.store import read_requests
from tests.loadgen.conftest import get_json

SMALL = ["--num-prompts", "40", "--concurrency", "4", "--input-len", "96", "--output-len", "4",
         "--tokenizer", "deepseek-r1", "--no-progress", "--metrics-interval", "0.1"]


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def only_result(folder: Path) -> dict:
    (path,) = sorted(folder.glob("*.json"))
    return json.loads(path.read_text())


def stream(base_url: str, body: dict) -> list[dict]:
    """One streamed completion; the decoded events."""
    req = urllib.request.Request(f"{base_url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        lines = resp.read().decode().splitlines()
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def model_time_s(base_url: str) -> float:
    """The sim's ``sim:model_time_seconds`` counter: engine time planned so far."""
    from prometheus_client.parser import text_string_to_metric_families

    page = urllib.request.urlopen(f"{base_url}/metrics", timeout=10).read().decode()
    (family,) = (f for f in text_string_to_metric_families(page) if f.name == "sim:model_time_seconds")
    return sum(s.value for s in family.samples if s.name.endswith("_total"))


# ---------------------------------------------------------------- the sim's cache, as a value


def test_cache_is_block_granular_chained_and_keeps_one_token_to_compute() -> None:
    cache = PrefixCache(capacity_tokens=1000, block_size=4)
    a = list(range(10))
    assert cache.lookup(a) == 0  # cold
    assert cache.lookup(a) == 8  # two full blocks; the last two tokens are not a block
    assert cache.lookup(list(range(8))) == 4  # fully cached prompt: the last block is recomputed
    assert cache.lookup([99] + a[1:]) == 0  # same later blocks after another first block: no match
    assert cache.lookup(a, salt="run-2") == 0  # a salt starts another chain
    assert cache.lookup(a, salt="run-2") == 8
    assert (cache.queries, cache.hits) == (10 + 10 + 8 + 10 + 10 + 10, 8 + 4 + 8)
    cache.reset()
    assert cache.lookup(a) == 0 and cache.resets == 1 and cache.hits == 20  # counters survive a reset


def test_cache_evicts_least_recently_used_tails_first() -> None:
    cache = PrefixCache(capacity_tokens=16, block_size=4)  # four blocks
    shared = [1, 1, 1, 1]
    cache.lookup(shared + [2] * 4 + [0])  # blocks: S, S2
    cache.lookup(shared + [3] * 4 + [0])  # S, S3  (S most recent)
    cache.lookup([7] * 8 + [0])  # two more blocks: over capacity, S2 (the oldest tail) goes
    assert len(cache.blocks) == 4
    s, s2 = cache.block_keys(shared + [2] * 4)
    assert s in cache.blocks and s2 not in cache.blocks  # the shared head survived, the older tail did not
    assert cache.lookup(shared + [3] * 4 + [0]) == 8


def test_warning_needs_a_cold_workload_and_a_hit_above_one_percent() -> None:
    assert prefix_cache.cold_workload("random", 0) and not prefix_cache.cold_workload("random", 64)
    assert not prefix_cache.cold_workload("sharegpt", 0)
    assert prefix_cache.warm_cache_warning(True, 0.01, None) is None
    assert prefix_cache.warm_cache_warning(True, None, None) is None  # nothing reported: nothing to say
    assert "same --seed" in prefix_cache.warm_cache_warning(True, None, 0.5)
    assert prefix_cache.warm_cache_warning(False, 0.9, 0.9) is None


def test_hit_rate_counts_only_requests_that_reported_and_merges_across_workers() -> None:
    def rec(i: int, cached: int | None, prompt: int = 100) -> RequestRecord:
        r = RequestRecord(i, prompt, 4, sent_ns=1, first_ns=2, last_ns=3, output_tokens=1,
                          server_prompt_tokens=prompt, cached_tokens=cached)
        r.chunk_ns.append(2)
        return r

    a, b = Aggregate(), Aggregate()
    a.add([rec(0, 50), rec(1, None)])
    b.add([rec(2, 0, 300)])
    a.merge(b)
    fig = prefix_cache.client_figures(a.summary(0, 10))
    assert fig == {"requests_reported": 2, "cached_tokens": 50, "prompt_tokens": 400, "hit_rate": 0.125}
    none = Aggregate()
    none.add([rec(0, None)])
    assert prefix_cache.client_figures(none.summary(0, 10))["hit_rate"] is None


# ---------------------------------------------------------------- the sim's cache over HTTP


def test_sim_reports_cached_tokens_and_skips_their_prefill(sim_server, tmp_path: Path) -> None:
    # every prompt token costs 1 ms of prefill: a 600-token miss takes >= 600 ms, a hit a few steps
    profile = tmp_path / "prefill.json"
    profile.write_text(json.dumps({"name": "prefill", "base_ms": 1.0, "decode_seq_ms": 0.0,
                                   "prefill_token_ms": 1.0, "max_batched_tokens": 4096}))
    srv = sim_server("--profile", str(profile))
    body = {"prompt": " hello" * 600, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    times = []
    usages = []
    model_s = []  # the engine time the sim's timing model planned for each request (its own clock)
    for _ in range(2):
        before = model_time_s(srv.base_url)
        t0 = time.perf_counter()
        events = stream(srv.base_url, body)
        times.append(time.perf_counter() - t0)
        model_s.append(model_time_s(srv.base_url) - before)
        usages.append(events[-1]["usage"])
    prompt = usages[0]["prompt_tokens"]
    assert usages[0]["prompt_tokens_details"] == {"cached_tokens": 0}
    cached = usages[1]["prompt_tokens_details"]["cached_tokens"]
    assert cached == (prompt - 1) // 16 * 16
    # the miss prefills every token, the hit only what the cache did not hold; a request never ends
    # before its planned time, while a busy machine may make either later
    assert model_s[0] >= 0.6 and model_s[1] < model_s[0] / 3 and times[0] >= 0.6
    page = urllib.request.urlopen(f"{srv.base_url}/metrics", timeout=10).read().decode()
    assert f'vllm:prefix_cache_queries_total{{model_name="deepseek-r1"}} {2 * prompt}.0' in page
    assert f'vllm:prefix_cache_hits_total{{model_name="deepseek-r1"}} {cached}.0' in page
    # vLLM counts every prompt token, cached or not; the computed ones are the sim's own counter
    assert f'vllm:prompt_tokens_total{{model_name="deepseek-r1"}} {2 * prompt}.0' in page
    assert f'sim:prefill_tokens_total{{model_name="deepseek-r1"}} {2 * prompt - cached}.0' in page
    # the reset empties it: the same prompt misses again
    urllib.request.urlopen(urllib.request.Request(f"{srv.base_url}/reset_prefix_cache", data=b"", method="POST"),
                           timeout=10)
    assert stream(srv.base_url, body)[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    urllib.request.urlopen(f"{srv.base_url}/flush_cache", timeout=10)  # SGLang's spelling
    assert get_json(f"{srv.base_url}/sim/stats")["prefix_cache"]["resets"] == 2


def test_sim_without_prefix_cache_reports_nothing(sim_server, tmp_path: Path) -> None:
    srv = sim_server("--no-prefix-cache")
    body = {"prompt": " hello" * 100, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    for _ in range(2):
        assert "prompt_tokens_details" not in stream(srv.base_url, body)[-1]["usage"]
    assert "prefix_cache" not in urllib.request.urlopen(f"{srv.base_url}/metrics", timeout=10).read().decode()
    out = tmp_path / "out"
    r = invoke(["--base-url", srv.base_url, *SMALL, "--output-dir", str(out)])
    assert r.exit_code == 0, r.output
    cache = only_result(out)["prefix_cache"]
    assert cache["client"] == {"requests_reported": 0, "cached_tokens": None, "prompt_tokens": None,
                               "hit_rate": None}
    assert cache["server"] is None and cache["warning"] is None
    assert "not reported / not reported" in r.output
    assert (read_requests(out / only_result(out)["files"]["requests"])["cached_tokens"] == -1).all()


# ---------------------------------------------------------------- loadgen against the sim


@pytest.mark.parametrize("backend", ["openai", "openai-chat", "sglang"])
def test_shared_prefix_hit_rate_agrees_with_the_sims_counters(sim_server, tmp_path: Path, private_cache,
                                                              backend: str) -> None:
    srv = sim_server()
    out = tmp_path / "out"
    r = invoke(["--base-url", srv.base_url, *SMALL, "--backend", backend, "--input-len", "160",
                "--prefix-len", "96", "--num-prefixes", "2", "--output-dir", str(out)])
    assert r.exit_code == 0, r.output
    res = only_result(out)
    cache = res["prefix_cache"]
    stats = get_json(f"{srv.base_url}/sim/stats")["prefix_cache"]
    client = cache["client"]
    assert client["requests_reported"] == res["completed"] == 40
    assert client["hit_rate"] > 0.3  # 38 of 40 prompts share a 96-token prefix
    # the sim's own counters also saw the pre-flight probe and /tokenize-free verification
    assert abs(client["hit_rate"] - stats["hits"] / stats["queries"]) < 0.01
    assert abs(client["hit_rate"] - cache["server"]["hit_rate"]) < 0.01
    assert not cache["cold_workload"] and cache["warning"] is None
    rows = read_requests(out / res["files"]["requests"])
    assert int(rows["cached_tokens"].sum()) == client["cached_tokens"]


def test_same_seed_rerun_on_a_warm_cache_is_flagged_and_reset_or_salt_cure_it(sim_server, tmp_path: Path,
                                                                              private_cache) -> None:
    srv = sim_server()
    base = ["--base-url", srv.base_url, *SMALL]

    def run(name: str, *extra: str) -> tuple[dict, str]:
        r = invoke([*base, "--output-dir", str(tmp_path / name), *extra])
        assert r.exit_code == 0, r.output
        return only_result(tmp_path / name)["prefix_cache"], r.output

    cold, _ = run("first")
    assert cold["cold_workload"] and cold["client"]["hit_rate"] < 0.01 and cold["warning"] is None
    warm, text = run("again")
    assert warm["client"]["hit_rate"] > 0.5 and warm["server"]["hit_rate"] > 0.5
    assert "WARM PREFIX CACHE" in text and "same --seed" in warm["warning"]
    from rich.console import Console

    from loadgen.progress import sweep_table

    console = Console(width=200, record=True)
    console.print(sweep_table([{"prefix_cache": warm}, {"prefix_cache": cold}]))
    assert console.export_text().count("warm-cache") == 1
    reset, _ = run("reset", "--reset-prefix-cache")
    assert reset["reset"] == {"ok": True, "route": "/reset_prefix_cache", "status": 200, "message": None}
    assert reset["client"]["hit_rate"] < 0.01 and reset["warning"] is None
    salted, _ = run("salted", "--cache-salt", "auto")
    assert salted["cache_salt"] and salted["client"]["hit_rate"] < 0.01 and salted["warning"] is None

    # the report: a hit-rate column, the warning among the comparability issues, TTFT vs cached share
    import analysis
    from analysis.report import write_report

    report = write_report(analysis.load([tmp_path / n for n in ("first", "again", "reset", "salted")]),
                          tmp_path / "report")
    table = pd.read_csv(report.summary_csv)
    assert sorted(table["client prefix hit rate"].round(2)) == [0.0, 0.0, 0.0, round(warm["client"]["hit_rate"], 2)]
    assert "prefix hit rate" in table.columns  # the server's, from its counters
    assert [i.kind for i in report.issues].count("warm_prefix_cache") == 1
    assert (tmp_path / "report" / "plots" / "ttft_vs_cached_fraction.png").is_file()


def test_warm_up_requests_have_prompts_of_their_own(sim_server, tmp_path: Path, private_cache) -> None:
    """--warmup on a random set warms the server, not its prefix cache for the measured prompts;
    the warm-up's prompts are recorded as warm-up rows, none of them a measured prompt."""
    srv = sim_server()
    r = invoke(["--base-url", srv.base_url, *SMALL, "--warmup", "8", "--save-requests",
                "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    res = only_result(tmp_path / "out")
    cache = res["prefix_cache"]
    assert res["warmup_requests"] == 8 and res["completed"] == 40
    assert cache["client"]["requests_reported"] == 40 and cache["client"]["hit_rate"] < 0.01, cache
    assert cache["warning"] is None
    rows = read_requests(tmp_path / "out" / res["per_request"]["requests"])
    warm, measured = rows[rows["warmup"]], rows[~rows["warmup"]]
    assert len(warm) == 8 and not set(warm["prompt_id"]) & set(measured["prompt_id"])


@pytest.mark.parametrize("fault", ["refuse", "hang"])
def test_a_refused_or_hanging_reset_is_one_line_and_the_point_still_runs(sim_server, tmp_path: Path,
                                                                         private_cache, fault: str) -> None:
    srv = sim_server("--fault-cache-reset", fault)
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = invoke(["--base-url", srv.base_url, *SMALL, "--timeout", "2", "--reset-prefix-cache",
                "--output-dir", str(out)])
    assert r.exit_code == 0, r.output
    assert time.monotonic() - t0 < 60
    res = only_result(out)
    reset = res["prefix_cache"]["reset"]
    assert res["completed"] == 40 and reset["ok"] is False
    expect = "answered success=false" if fault == "refuse" else "did not answer within 2 s"
    assert expect in reset["message"]
    notes = [line for line in r.output.splitlines() if "prefix cache not reset" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and expect in notes[0]


def test_reset_against_a_server_without_either_route_says_so(sim_fast) -> None:
    out = prefix_cache.reset(sim_fast.base_url + "/nowhere", timeout_s=5)
    assert out["ok"] is False and out["status"] == 404 and "VLLM_SERVER_DEV_MODE" in out["message"]


def test_body_cache_salt_is_refused_for_sglang_native(sim_fast, tmp_path: Path) -> None:
    """SGLang's /generate takes no cache_salt field: asked for, it is one line (the default there is prefix)."""
    r = invoke(["--base-url", sim_fast.base_url, *SMALL, "--backend", "sglang", "--cache-salt", "x",
                "--cache-salt-mode", "body", "--output-dir", str(tmp_path)])
    assert r.exit_code == 2
    assert "cache_salt" in r.output and len(r.output.strip().splitlines()) == 1


def test_sglang_cached_tokens_counter_gives_the_servers_hit_rate_over_its_prompt_tokens() -> None:
    from loadgen.telemetry.scrape import ScrapeLog, Tick
    from loadgen.telemetry.timeline import summary
    from loadgen.telemetry.vocab import choose_names

    names = choose_names({"sglang:cached_tokens_total", "sglang:prompt_tokens_total", "sglang:cache_hit_rate"})
    assert names["prefix_cache_hits"] == "sglang:cached_tokens_total" and "prefix_cache_queries" not in names
    log = ScrapeLog(ticks=[Tick(0, {"prefix_cache_hits": 100.0, "prompt_tokens": 1000.0}, {}, None, None),
                           Tick(int(2e9), {"prefix_cache_hits": 400.0, "prompt_tokens": 2000.0}, {}, None, None)])
    s = summary(log, start_ns=0, end_ns=int(2e9))
    assert s["prefix_hit_rate"] == pytest.approx(0.3)  # 300 cached of 1000 prompt tokens
    assert prefix_cache.server_figures({"summary": s})["hit_rate"] == pytest.approx(0.3)


def test_generate_input_ids_are_cached_and_must_be_ids(sim_fast) -> None:
    def generate(body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(f"{sim_fast.base_url}/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    ids = list(range(1000, 1100))
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 2}}
    generate(body)
    status, out = generate(body)
    assert status == 200 and out["meta_info"]["cached_tokens"] == 96
    status, out = generate({"input_ids": [[1, 2]], "sampling_params": {"max_new_tokens": 2}})
    assert status == 400 and "input_ids" in out["error"]["message"]
