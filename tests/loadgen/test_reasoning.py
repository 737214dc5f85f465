"""Reasoning models: TTFA, reasoning tokens and time, no-answer requests, unknown fields.

The figures are checked as pure functions on hand-built records, and end to end with
the real ``loadgen`` command against a real sim in reasoning mode.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from array import array
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis.checks import comparability
from analysis.report import write_report
from launcher.sim.profiles import Profile, ProfileError
from launcher.sim.server import check_argv
from loadgen.aggregate import Aggregate
from loadgen.config import ConfigError, parse_chat_template_kwargs, parse_goodput, target_from
from loadgen.metrics import good_mask, per_request
from loadgen.records import RequestRecord
from loadgen.search import method as search_method
from loadgen.store import figures, read_requests, request_rows
from tests.loadgen.conftest import invoke, parsed, results_in, write_profile

MS = 1_000_000
T0 = 10_000 * MS


def record(chunks_ms: list[float], tokens: list[int], out: int, *, answer_ms: float | None, reasoning: int,
           usage: int | None = None, unknown: int = 0) -> RequestRecord:
    stamps = [T0 + int(c * MS) for c in chunks_ms]
    return RequestRecord(
        prompt_id=1, input_len=10, output_len=out, sent_ns=T0, first_ns=stamps[0], last_ns=stamps[-1],
        chunk_ns=array("q", stamps), chunk_tokens=array("i", tokens), output_tokens=out, output_tokens_source="usage",
        answer_ns=0 if answer_ms is None else T0 + int(answer_ms * MS), reasoning_chunk_tokens=reasoning,
        reasoning_tokens_usage=usage, unrecognised_tokens=unknown,
    )


def test_reasoning_split_of_one_request() -> None:
    # 3 reasoning tokens at 10, 20, 30 ms, then 4 answer tokens at 40..70 ms
    r = record([10, 20, 30, 40, 50, 60, 70], [1] * 7, 7, answer_ms=40, reasoning=3)
    rs = per_request([r]).reasoning
    assert rs.ttfa_ms[0] == pytest.approx(40) and rs.reasoning_time_ms[0] == pytest.approx(30)
    assert rs.answer_time_ms[0] == pytest.approx(30) and rs.answer_tpot_ms[0] == pytest.approx(10)
    assert (rs.reasoning_tokens[0], rs.answer_tokens[0]) == (3, 4)
    assert rs.reasoned[0] and not rs.no_answer[0] and not rs.from_usage[0]


def test_server_count_wins_and_chunk_counts_are_rescaled() -> None:
    r = record([10, 20, 30], [1, 1, 1], 7, answer_ms=30, reasoning=2, usage=5)
    rs = per_request([r]).reasoning
    assert (rs.reasoning_tokens[0], rs.answer_tokens[0]) == (5, 2) and rs.from_usage[0]
    # one token per chunk counted, the final usage says 9: the split keeps its proportions
    r = record([10, 20, 30], [1, 1, 1], 9, answer_ms=30, reasoning=2)
    rs = per_request([r]).reasoning
    assert (rs.reasoning_tokens[0], rs.answer_tokens[0]) == (6, 3)
    # a server that reports 0 beside reasoning deltas does not count them (SGLang's default 0)
    r = record([10, 20, 30], [1, 1, 1], 3, answer_ms=30, reasoning=2, usage=0)
    rs = per_request([r]).reasoning
    assert (rs.reasoning_tokens[0], rs.from_usage[0]) == (2, False)


def test_no_answer_and_no_reasoning() -> None:
    thought = record([10, 20, 30], [1, 1, 1], 3, answer_ms=None, reasoning=3)
    plain = record([5, 15], [1, 1], 2, answer_ms=5, reasoning=0)
    silent = record([5, 15], [1, 1], 2, answer_ms=None, reasoning=0)  # tokens without text: still an answer
    unknown = record([10, 20, 30], [1, 1, 1], 3, answer_ms=30, reasoning=0, unknown=2)
    rs = per_request([thought, plain, silent, unknown]).reasoning
    assert list(rs.no_answer) == [True, False, False, False]
    assert list(rs.reasoned) == [True, False, False, True]
    assert np.isnan(rs.ttfa_ms[0]) and rs.reasoning_time_ms[0] == pytest.approx(20)
    assert rs.ttfa_ms[1] == pytest.approx(5) and np.isnan(rs.reasoning_time_ms[1])
    assert rs.ttfa_ms[2] == pytest.approx(5)
    # an unknown field's tokens are not reasoning tokens, nor answer ones
    assert (rs.reasoning_tokens[3], rs.answer_tokens[3]) == (0, 1) and rs.reasoning_time_ms[3] == pytest.approx(20)


def test_reasoning_figures_merge_across_workers() -> None:
    recs = [record([10, 20, 30, 40], [1] * 4, 4, answer_ms=30, reasoning=2),
            record([10, 20, 30], [1] * 3, 3, answer_ms=None, reasoning=3, usage=3),
            record([5, 15], [1, 1], 2, answer_ms=5, reasoning=0),
            record([10, 20, 30], [1] * 3, 3, answer_ms=30, reasoning=0, unknown=2)]
    recs[3].unrecognised_field = "thinking"
    whole = Aggregate(inline_limit=0)
    whole.add(recs)
    a, b = Aggregate(inline_limit=0), Aggregate(inline_limit=0)
    a.add(recs[:2])
    b.add(recs[2:])
    a.merge(b)
    for agg in (whole, a):
        s = agg.summary(T0, T0 + 100 * MS)
        assert (s.reasoning_requests, s.no_answer) == (3, 1)
        assert (s.total_reasoning_tokens, s.total_answer_tokens) == (5, 5)
        assert s.reasoning_tokens_source == {"deltas": 2, "usage": 1} and s.unrecognised_fields == {"thinking": 1}
        assert s.stats["ttfa"].n == 3 and s.stats["ttfa"].mean == pytest.approx((30 + 5 + 30) / 3)
        assert s.stats["reasoning_time"].n == 3


def test_ttfa_objectives_fail_a_request_that_never_answered() -> None:
    fast = record([10, 20, 30], [1] * 3, 3, answer_ms=20, reasoning=1)
    slow = record([10, 200, 300], [1] * 3, 3, answer_ms=200, reasoning=1)
    never = record([10, 20, 30], [1] * 3, 3, answer_ms=None, reasoning=3)
    assert list(good_mask(per_request([fast, slow, never]), {"ttfa": 100})) == [True, False, False]
    assert parse_goodput(["ttfa:100"]) == {"ttfa": 100.0}
    # loadgen search judges from the store: the same request is infinitely slow there
    rows = request_rows([fast, never], T0)
    assert search_method.parse_slo("ttfa:p99=100").metric == "ttfa"
    assert list(search_method.per_request(rows)["ttfa"]) == [pytest.approx(20), np.inf]


def test_chat_template_kwargs_parse_and_target() -> None:
    assert parse_chat_template_kwargs('{"enable_thinking": false}') == {"enable_thinking": False}
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_chat_template_kwargs("{enable_thinking: false}")
    with pytest.raises(ConfigError, match="JSON object"):
        parse_chat_template_kwargs("[1]")
    with pytest.raises(ConfigError, match="openai-chat only"):
        target_from("http://127.0.0.1:1", backend="vllm", chat_template_kwargs={"enable_thinking": False})
    t = target_from("http://127.0.0.1:1", backend="openai-chat", extra_body={"chat_template_kwargs": {"a": 1}, "x": 2},
                    chat_template_kwargs={"enable_thinking": False})
    assert t.body_extra() == {"chat_template_kwargs": {"a": 1, "enable_thinking": False}, "x": 2}


def test_sim_reasoning_options_are_checked() -> None:
    assert "is not a JSON field name" in check_argv(["--reasoning-field", "a-b"])
    assert "probability" in check_argv(["--reasoning-fraction", "1.5"])
    assert check_argv(["--reasoning-fraction", "0.5", "--reasoning-field", "reasoning"]) is None
    with pytest.raises(ProfileError, match="reasoning_fraction"):
        Profile(name="x", base_ms=1, decode_seq_ms=0, prefill_token_ms=0, reasoning_fraction=-0.1)


def post(base_url: str, body: dict) -> dict:
    req = urllib.request.Request(base_url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_sim_non_streamed_reasoning_and_thinking_off(sim_server) -> None:
    srv = sim_server("--reasoning-fraction", "0.25", "--reasoning-field", "reasoning")
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "ignore_eos": True}
    res = post(srv.base_url, body)
    msg = res["choices"][0]["message"]
    assert msg["reasoning"] and msg["content"]
    assert res["usage"]["completion_tokens"] == 8 and res["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2}
    res = post(srv.base_url, {**body, "chat_template_kwargs": {"enable_thinking": False}})
    assert "reasoning" not in res["choices"][0]["message"] and "completion_tokens_details" not in res["usage"]
    with pytest.raises(urllib.error.HTTPError) as bad:
        post(srv.base_url, {**body, "chat_template_kwargs": "no"})
    assert bad.value.code == 400 and "chat_template_kwargs" in bad.value.read().decode()


CHAT = ["--backend", "openai-chat", "--num-prompts", "12", "--concurrency", "4", "--input-len", "32",
        "--output-len", "40", "--tokenizer", "deepseek-r1", "--no-progress", "--save-requests"]


def run_reasoning(sim_server, tmp_path: Path, sim_args: list[str], *args: str) -> tuple[dict, str]:
    """A sim in reasoning mode with 2 ms steps (so the first answer token comes tens of ms
    after the first reasoning token, on any machine), one loadgen chat point against it:
    the result and the printed output."""
    srv = sim_server("--profile", str(write_profile(tmp_path, base_ms=2.0)), *sim_args)
    out = tmp_path / "out"
    r = invoke(["--base-url", srv.base_url, *CHAT, "--output-dir", str(out), *args])
    assert r.exit_code == 0, r.output + r.stderr
    (res,) = results_in(out)
    return res, r.output


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_run_reports_ttfa_and_tokens_that_add_up(sim_server, tmp_path: Path, field: str) -> None:
    res, output = run_reasoning(sim_server, tmp_path, ["--reasoning-fraction", "0.5", "--reasoning-field", field])
    assert res["completed"] == 12 and res["failed"] == 0 and res["no_answer"] == 0
    assert res["reasoning_requests"] == 12 and res["reasoning_tokens_source"] == {"usage": 12}
    assert res["total_reasoning_tokens"] == 12 * 20
    assert res["total_reasoning_tokens"] + res["total_answer_tokens"] == res["total_output_tokens"] == 12 * 40
    assert res["mean_ttfa_ms"] > res["mean_ttft_ms"]
    assert res["mean_reasoning_time_ms"] == pytest.approx(res["mean_ttfa_ms"] - res["mean_ttft_ms"])
    assert res["mean_answer_tpot_ms"] > 0 and res["unrecognised_output_fields"] == {}
    rows = read_requests(tmp_path / "out" / res["per_request"]["requests"])
    assert (rows["reasoning_tokens"] == 20).all() and (rows["answer_ms"] >= rows["first_ms"]).all()
    assert np.nanmean(figures(rows)["ttfa_ms"]) == pytest.approx(res["mean_ttfa_ms"], rel=1e-6)
    assert "TTFA" in output and "of which reasoning" in output
    if field == "reasoning":
        return
    # the report: reasoning columns in summary.csv, the reasoning-vs-answer plot
    report = write_report(analysis.load(tmp_path / "out"), tmp_path / "report")
    table = pd.read_csv(report.summary_csv)
    assert table.loc[0, "mean TTFA(ms)"] == pytest.approx(res["mean_ttfa_ms"], abs=0.01)
    assert table.loc[0, "reasoning_tokens"] == 12 * 20 and table.loc[0, "answer_tokens"] == 12 * 20
    assert table.loc[0, "no_answer"] == 0
    assert (tmp_path / "report" / "plots" / "reasoning_vs_answer_time.png").stat().st_size > 0
    # against a set that did not reason, the report says they measure different things
    runs = analysis.load(tmp_path / "out")
    plain = runs.assign(label="no-thinking", reasoning_requests=0, no_answer=0)
    (issue,) = [i for i in comparability(pd.concat([runs, plain])) if i.kind == "reasoning"]
    assert issue.severity == "warning" and "no-thinking did not" in issue.message


def test_reasoning_counted_from_deltas_without_usage(sim_server, tmp_path: Path) -> None:
    res, _ = run_reasoning(sim_server, tmp_path, ["--reasoning-fraction", "0.25"],
                           "--extra-body", '{"stream_options": null}')
    assert res["output_tokens_source"] == {"chunks": 12} and res["reasoning_tokens_source"] == {"deltas": 12}
    assert res["total_reasoning_tokens"] == 12 * 10 and res["total_answer_tokens"] == 12 * 30


def test_whole_output_spent_reasoning_is_no_answer_not_failure(sim_server, tmp_path: Path) -> None:
    res, output = run_reasoning(sim_server, tmp_path, ["--reasoning-fraction", "1"])
    assert res["completed"] == 12 and res["failed"] == 0 and res["no_answer"] == 12
    assert res["total_answer_tokens"] == 0 and res["mean_ttfa_ms"] is None and res["mean_reasoning_time_ms"] > 0
    assert "NO ANSWER: 12 of 12" in output
    (note,) = [i for i in comparability(analysis.load(tmp_path / "out")) if i.kind == "no_answer"]
    assert "12 request(s) spent their whole max_tokens reasoning" in note.message


def test_unknown_reasoning_field_counts_as_output_and_is_named(sim_server, tmp_path: Path) -> None:
    res, output = run_reasoning(sim_server, tmp_path, ["--reasoning-fraction", "0.5", "--reasoning-field", "thinking"])
    assert res["completed"] == 12 and res["total_output_tokens"] == 12 * 40
    assert res["unrecognised_output_fields"] == {"thinking": 12}
    assert res["mean_ttfa_ms"] > res["mean_ttft_ms"]
    assert "UNRECOGNISED OUTPUT FIELD" in output and "'thinking'" in output


def test_thinking_off_is_sent_and_recorded(sim_server, tmp_path: Path) -> None:
    res, _ = run_reasoning(sim_server, tmp_path, ["--reasoning-fraction", "0.5"],
                           "--chat-template-kwargs", '{"enable_thinking": false}')
    assert res["reasoning_requests"] == 0 and res["total_answer_tokens"] == 12 * 40
    assert res["mean_ttfa_ms"] == res["mean_ttft_ms"]
    assert res["config"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert res["run_config"]["target"]["chat-template-kwargs"] == {"enable_thinking": False}
    # the result's configuration runs again with it, and a TOML file gives it as a table
    again = parsed(["--config", str(next((tmp_path / "out").glob("*.json")))])
    assert again.target.body_extra() == {"chat_template_kwargs": {"enable_thinking": False}}
    toml = tmp_path / "run.toml"
    toml.write_text('[target]\nbackend = "openai-chat"\nchat-template-kwargs = { enable_thinking = false }\n')
    assert parsed(["--config", str(toml)]).target.chat_template_kwargs == {"enable_thinking": False}


@pytest.mark.parametrize(("args", "needle"), [
    (["--backend", "openai-chat", "--chat-template-kwargs", "{nope"], "--chat-template-kwargs is not valid JSON"),
    (["--chat-template-kwargs", '{"enable_thinking": false}'], "openai-chat only"),
])
def test_bad_chat_template_kwargs_is_one_line(args: list[str], needle: str) -> None:
    r = invoke(args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
