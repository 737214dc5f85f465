"""Multi-turn sessions: exact prompt lengths over a live history, release order, the
session's end, against a real sim on 127.0.0.1 and the real DeepSeek-R1 tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadgen.runner import Target, run
from loadgen.workload import WorkloadError, build_prompts
from loadgen.workload.dist import parse_dist
from loadgen.workload.fit import view_of
from loadgen.workload.sessions import probe_shape, reply_in_history, turn_messages
from loadgen.workload.spec import SessionSpec, WorkloadSpec
from tests.conftest import FIXTURES as FIXTURE_ROOT
from tests.conftest import REPO_ROOT


def _sessions(n: int, turns: str = "3", history: str = "live", system: str = "64", think: str = "0",
              user: str = "40", output: str = "24") -> list:
    spec = WorkloadSpec(dataset="sessions", num_prompts=n, chat=True, seed=3,
                        session=SessionSpec(turns=turns, user_len=user, output_len=output, system_len=system,
                                            think_s=think, history=history))
    return build_prompts(spec)


def _target(srv) -> Target:  # noqa: ANN001 - conftest.SimServer
    return Target(base_url=srv.base_url, backend="openai-chat", model="deepseek-r1")


def _by_turn(records) -> list:  # noqa: ANN001
    return sorted(records, key=lambda r: (r.session, r.turn))


def test_live_history_every_turn_counts_exactly(sim_fast, tok) -> None:
    prompts = _sessions(4, turns="3", think="0.01")
    out = run(_target(sim_fast), prompts, None, concurrency=2, max_model_len=8192)
    records = _by_turn(out.records)
    assert [(r.session, r.turn) for r in records] == [(s, t) for s in range(4) for t in range(3)]
    for r in records:
        assert r.error is None
        assert r.server_prompt_tokens == r.input_len  # the server counted what we expected
    # the lengths grow by whole turns: reply + new user message + the template's wrappers
    for s in range(4):
        lens = [r.input_len for r in records if r.session == s]
        assert lens[0] < lens[1] < lens[2]
    assert [r.session_end for r in records if r.turn == 2] == ["completed"] * 4
    # each turn is released after the previous reply ended plus its think time
    for a, b in zip(records, records[1:], strict=False):
        if a.session == b.session:
            think = prompts[a.session].session.turns[b.turn].think_s
            assert b.sent_ns >= a.last_ns + int(think * 1e9)


def test_live_history_carries_back_the_answer_only_not_the_reasoning(sim_server, tok) -> None:
    """Behind a reasoning parser the reply streams as reasoning_content, then content: the
    next turn carries only the content, as a chat client sends back, and the server's count
    of that prompt agrees."""
    srv = sim_server("--reasoning-fraction", "0.5")
    prompts = _sessions(2, turns="3", output="24")
    target = Target(base_url=srv.base_url, backend="openai-chat", model="deepseek-r1", save_text=True)
    out = run(target, prompts, None, concurrency=2, max_model_len=8192)
    records = _by_turn(out.records)
    assert len(records) == 6 and all(r.error is None for r in records)
    shape = prompts[0].session.shape
    for a, b in zip(records, records[1:], strict=False):
        if a.session != b.session:
            continue
        assert a.reasoning_text and a.text and a.reasoning_text not in a.text  # both parts came, apart
        answer = len(tok.encode(reply_in_history(shape, a.text), add_special_tokens=False))
        user = prompts[b.session].session.turns[b.turn].user_len
        assert b.input_len == a.input_len + shape.per_turn + answer + user  # the answer alone grew the prompt
        assert b.server_prompt_tokens == b.input_len  # and the server received exactly that
    assert all(r.output_text == r.reasoning_text + r.text for r in records)  # --save-text keeps both


def test_recorded_history_counts_known_before_the_run(tok) -> None:
    prompts = _sessions(3, turns="4", history="recorded")
    for p in prompts:
        s = p.session
        replies = [t.reply for t in s.turns]
        for k, turn in enumerate(s.turns):
            counted = len(tok.apply_chat_template(turn_messages(s, k, replies), add_generation_prompt=True))
            assert turn.input_len == counted


def test_deepseek_template_drops_thinking_and_grows_additively(tok) -> None:
    shape, _first = probe_shape(view_of(tok), "system text", "deepseek-r1", "live")
    assert shape.additive and shape.drops_thinking
    assert reply_in_history(shape, "reasoning</think>answer") == "answer"
    # a reply with thinking: the expected count still matches the template's own count
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hello there"}]
    n1 = len(tok.apply_chat_template(msgs, add_generation_prompt=True))
    reply = "let me think</think> The answer"
    msgs2 = [*msgs, {"role": "assistant", "content": reply}, {"role": "user", "content": " next"}]
    n2 = len(tok.apply_chat_template(msgs2, add_generation_prompt=True))
    kept = len(tok.encode(reply_in_history(shape, reply), add_special_tokens=False))
    assert n2 == n1 + shape.per_turn + kept + len(tok.encode(" next", add_special_tokens=False))


def test_session_ends_before_exceeding_the_context(sim_server) -> None:
    srv = sim_server("--max-model-len", "400")
    prompts = _sessions(2, turns="6", system="100", user="60", output="40")
    out = run(_target(srv), prompts, None, concurrency=2, max_model_len=400)
    records = _by_turn(out.records)
    assert all(r.error is None for r in records)
    for s in range(2):
        mine = [r for r in records if r.session == s]
        assert mine[-1].session_end == "context_exceeded"
        assert len(mine) < 6
        assert mine[-1].input_len + 40 <= 400


def test_session_header_reaches_the_server_with_the_session_id() -> None:
    from loadgen.sessions import session_head

    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
    assert session_head(head, "X-Session-Id", 7) == \
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Session-Id: 7\r\nContent-Length: "
    assert session_head(head, None, 7) == head


@pytest.mark.parametrize(("text", "message"), [
    ("fast", "not a value or distribution"),
    ("uniform:5:2", "LOW <= HIGH"),
    ("lognormal:0:1", "mean must be > 0"),
    ("0", "at least 1"),
])
def test_bad_distribution_is_one_line(text: str, message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        parse_dist(text, "--session-turns", minimum=1)


def test_distributions_draw_within_their_bounds() -> None:
    rng = np.random.default_rng(1)
    vals = np.asarray(parse_dist("uniform:4:12", "x").ints(rng, 1000, 1))
    assert vals.min() >= 4 and vals.max() <= 12
    logn = parse_dist("lognormal:2:1", "x").draw(rng, 20000)
    assert abs(logn.mean() - 2) < 0.1 and abs(logn.std() - 1) < 0.15
    assert parse_dist("3", "x").ints(rng, 3, 1) == [3, 3, 3]


def _loadgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadgen.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_sessions_run_writes_session_figures(sim_fast, tmp_path: Path) -> None:
    proc = _loadgen("--base-url", sim_fast.base_url, "--backend", "openai-chat", "--tokenizer", "deepseek-r1",
                    "--dataset-name", "sessions", "--num-prompts", "6", "--session-turns", "uniform:2:4",
                    "--turn-input-len", "30", "--turn-output-len", "16", "--system-prompt-len", "50",
                    "--think-time", "exponential:0.01", "--concurrency", "3", "--session-header", "X-Session-Id",
                    "--output-dir", str(tmp_path), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "Sessions completed / failed / context / cut" in proc.stdout and "6 / 0 / 0 / 0" in proc.stdout
    (path,) = tmp_path.glob("*.json")
    # named by turns and per-turn lengths; vLLM's per-request length keys claim nothing
    assert path.name.startswith("openai-chat-c3-rinf-sessions-tuniform_2_4-i30-o16-")
    result = json.loads(path.read_text())
    assert result["random_input_len"] is None
    sessions = result["sessions"]
    assert sessions["sessions"] == 6 and sessions["completed"] == 6
    assert result["prompt_token_mismatches"] == 0 and result["prompt_tokens_checked"] == result["completed"]
    assert sum(t["requests"] for t in sessions["by_turn"]) == result["completed"]
    assert 2 <= sessions["turns_completed"]["min"] <= sessions["turns_completed"]["max"] <= 4
    rows = np.load(next(tmp_path.glob("*.requests.npy")))
    assert set(rows["session"].tolist()) == set(range(6))
    assert (rows["session_end"] == b"completed").sum() == 6
    # the report: session columns in summary.csv and the TTFT-by-turn plot
    report = subprocess.run([sys.executable, "-m", "analysis.cli", str(tmp_path), "--out", str(tmp_path / "report")],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    import pandas as pd
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert table["sessions completed"].tolist() == [6]
    assert (tmp_path / "report" / "plots" / "ttft_by_turn.png").stat().st_size > 0


def test_warmup_seconds_leaves_out_whole_sessions(sim_fast, tmp_path: Path) -> None:
    """--warmup-seconds with sessions: a session whose first turn was released in the warm-up
    window is warm-up in every turn, so the figures hold whole sessions only."""
    proc = _loadgen("--base-url", sim_fast.base_url, "--backend", "openai-chat", "--tokenizer", "deepseek-r1",
                    "--dataset-name", "sessions", "--num-prompts", "400", "--session-turns", "3",
                    "--turn-input-len", "20", "--turn-output-len", "8", "--think-time", "0.2", "--concurrency", "4",
                    "--duration", "3", "--warmup-seconds", "1", "--output-dir", str(tmp_path), "--no-progress",
                    "--server-metrics", "off")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    rows = np.load(next(tmp_path.glob("*.requests.npy")))
    rows = rows[rows["session"] >= 0]
    warm, measured = set(), set()
    for s in set(rows["session"].tolist()):
        mine = rows[rows["session"] == s]
        flags = set(mine["warmup"].tolist())
        assert len(flags) == 1, f"session {s} is split between warm-up and measured turns"
        first = mine[mine["turn"] == 0]
        assert len(first) == 1
        assert bool(first["sent_ms"][0] < 1000.0) is flags.pop()  # judged by its first turn's release
        (warm if first["sent_ms"][0] < 1000.0 else measured).add(s)
    assert warm and measured  # 4 users, 0.2 s think: sessions start in both windows
    assert result["sessions"]["sessions"] == len(measured)
    assert result["warmup_requests"] == int(rows["warmup"].sum())
    assert result["completed"] + result["failed"] == int((~rows["warmup"]).sum())


def test_search_over_concurrent_users(sim_fast, tmp_path: Path) -> None:
    """`loadgen search --over concurrency` with sessions: each probe's load is users holding a
    slot for whole sessions, and the record says so."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen.cli", "search", "--base-url", sim_fast.base_url, "--backend", "openai-chat",
         "--tokenizer", "deepseek-r1", "--dataset-name", "sessions", "--base-prompts", "20", "--session-turns", "3",
         "--turn-input-len", "20", "--turn-output-len", "8", "--think-time", "0.05", "--over", "concurrency",
         "--slo", "ttft:p99<=60000", "--duration", "1.5", "--warmup-seconds", "0.3", "--max", "4",
         "--max-probes", "3", "--label", "users", "--no-progress", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert "concurrent users" in proc.stdout and "concurrent requests" not in proc.stdout
    rec = json.loads((out / "users.capacity.json").read_text())
    assert rec["unit"] == "concurrent users" and rec["over"] == "concurrency"
    assert rec["input_len"] == "20" and rec["output_len"] == "8"  # per turn
    # The SLO is lax: every probe passes, unless a stalled client sent too few requests in the steady
    # window for a verdict, which the probe says (and then the search may end below its minimum, exit 1).
    assert 1 <= len(rec["probes"]) <= 3
    for p in rec["probes"]:
        assert p["passed"] or (p["client_saturated"] and all("steady-state requests" in f for f in p["failures"])), p
    assert proc.returncode == (1 if rec["status"] == "below_min" else 0), proc.stderr
    for p in rec["probes"]:
        result = json.loads((out / p["file"]).read_text())
        assert result["sessions"]["sessions"] >= 1 and result["prompt_token_mismatches"] == 0
        rows = np.load(out / p["file"].replace(".json", ".requests.npy"))
        rows = rows[rows["session"] >= 0]
        # sessions are whole on either side of the warm-up line, ids unique however often the set was reused
        for s in set(rows["session"].tolist()):
            mine = rows[rows["session"] == s]
            assert len(set(mine["warmup"].tolist())) == 1 and sorted(mine["turn"].tolist()) == list(range(len(mine)))
        assert result["max_concurrency"] == p["load"]  # users, each a session at a time


def test_cli_sessions_need_the_chat_backend(tmp_path: Path) -> None:
    proc = _loadgen("--dataset-name", "sessions", "--output-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "--backend openai-chat" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_bad_think_time_is_one_line(sim_fast, tmp_path: Path) -> None:
    proc = _loadgen("--base-url", sim_fast.base_url, "--backend", "openai-chat", "--tokenizer", "deepseek-r1",
                    "--dataset-name", "sessions", "--think-time", "gaussian:1", "--output-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "--think-time" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.json"))


FIXTURES = FIXTURE_ROOT / "workload"


def _conversations(path: Path, n: int, history: str = "live") -> list:
    return build_prompts(WorkloadSpec(dataset="sessions", dataset_path=str(path), num_prompts=n, output_len=16,
                                      chat=True, session=SessionSpec(history=history)), use_cache=False)


@pytest.mark.parametrize("history", ["live", "recorded"])
def test_jsonl_sessions_count_exactly_on_the_server(sim_fast, tmp_path: Path, history: str) -> None:
    path = tmp_path / "sessions.jsonl"
    path.write_text(
        json.dumps({"system": "You are terse.", "turns": [
            {"user": "What is a prefix cache?", "assistant": "It keeps the KV of shared prompt starts."},
            {"user": "Why does it help chat?", "assistant": "Each turn repeats the conversation.", "think_s": 0.02},
            {"user": "Thanks!", "output_len": 5}]}) + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "Hello"},
                                   {"role": "assistant", "content": "<think>a greeting</think>Hi there."},
                                   {"role": "user", "content": "How are you?"}]}) + "\n")
    prompts = _conversations(path, 2, history)
    turns = prompts[0].session.turns
    assert [t.think_s for t in turns] == [0.0, 0.02, 0.0]
    assert turns[2].output_len == 5 and turns[0].output_len > 0
    out = run(_target(sim_fast), prompts, None, concurrency=2, max_model_len=8192)
    records = _by_turn(out.records)
    assert [(r.session, r.turn) for r in records] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert all(r.error is None and r.server_prompt_tokens == r.input_len for r in records)


def test_sharegpt_sessions_take_every_turn(tok) -> None:
    # 14 entries: one of two full turns, eleven of one, one opening with a reply, one system-only
    prompts = _conversations(FIXTURES / "sharegpt_small.json", 12, history="recorded")
    assert sorted(len(p.session.turns) for p in prompts) == [1] * 11 + [2]
    with pytest.raises(WorkloadError, match="has 12 conversations but 13 sessions"):
        _conversations(FIXTURES / "sharegpt_small.json", 13)
    for p in prompts:
        s = p.session
        replies = [t.reply for t in s.turns]
        for k, t in enumerate(s.turns):
            assert t.input_len == len(tok.apply_chat_template(turn_messages(s, k, replies), add_generation_prompt=True))


@pytest.mark.parametrize(("line", "message"), [
    ('{"turns": [{"user": "hi"}, {"assistant": "no user here"}]}', "turn 2 has no user message"),
    ('{"turns": []}', "non-empty list"),
    ('{"messages": [{"role": "assistant", "content": "first"}]}', "does not follow a user message"),
    ('{"prompt": "single"}', "needs a 'turns' list"),
    ('not json', "not valid JSON"),
    ('{"turns": [{"user": "hi", "think_s": -1}]}', "'think_s' must be"),
])
def test_bad_sessions_file_names_file_line_and_fix(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"turns": [{"user": "fine"}]}\n' + line + "\n")
    with pytest.raises(WorkloadError, match=message) as err:
        _conversations(path, 2)
    assert f"{path}:2" in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_sessions_file_sends_nothing(sim_server, tmp_path: Path) -> None:
    srv = sim_server()
    path = tmp_path / "bad.jsonl"
    path.write_text('{"turns": [{"user": "hi"}, {"user": ""}]}\n')
    proc = _loadgen("--base-url", srv.base_url, "--backend", "openai-chat", "--tokenizer", "deepseek-r1",
                    "--dataset-name", "sessions", "--dataset-path", str(path), "--num-prompts", "1",
                    "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert f"{path}:1: turn 2 has no user message" in proc.stderr and "Traceback" not in proc.stderr
    import urllib.request
    stats = json.loads(urllib.request.urlopen(f"{srv.base_url}/sim/stats", timeout=10).read())
    assert stats["requests_total"] <= 1  # the pre-flight's 2-token stream probe, no benchmark request
    assert not list(tmp_path.glob("out/*.json"))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_bench_sessions_sweep_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    argv = [sys.executable, "-m", "orchestrator.bench", "--engine", "sim", "--profile", "fast", "--sweep", "sessions",
            "--concurrency", "2", "--lengths", "32x16", "--out", str(out), "--no-plots"]
    proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = sorted((out / "sim-fast").glob("serving_benchmark_*.json"))
    # one point: the sweep's think time (1 s mean) is real time whatever the sim's speed, and the loop over
    # points is test_bench_loop's; this is the sessions wiring (chat backend, per-turn lengths, report)
    assert [p.name for p in results] == ["serving_benchmark_2_32_16.json"]
    for path in results:
        data = json.loads(path.read_text())
        assert data["sessions"]["completed"] == data["sessions"]["sessions"] >= 4
        assert data["prompt_token_mismatches"] == 0
    import pandas as pd
    table = pd.read_csv(out / "report" / "summary.csv")
    assert table["sessions completed"].tolist() == [4]
    assert "sessions completed" in (out / "report" / "report.html").read_text()
    assert not (out / "report" / "plots").exists()  # --no-plots (the figures: test_cli_sessions_run_writes_...)


def test_reply_counter_counts_like_the_tokenizer_and_fails_in_one_line(tok) -> None:
    import asyncio

    from loadgen.workload.sidecar import ReplyCounter

    async def counts() -> list[int]:
        counter = ReplyCounter("deepseek-r1")
        await counter.start()
        try:
            msgs = [{"role": "user", "content": "hello there"}]
            return await asyncio.gather(counter.count(" the cat sat"), counter.count(""), counter.count(msgs))
        finally:
            await counter.close()

    text_n, empty_n, chat_n = asyncio.run(counts())
    assert text_n == len(tok.encode(" the cat sat", add_special_tokens=False)) and empty_n == 0
    assert chat_n == len(tok.apply_chat_template([{"role": "user", "content": "hello there"}],
                                                 add_generation_prompt=True))
    with pytest.raises(WorkloadError, match="the reply counter did not start within") as err:
        asyncio.run(ReplyCounter("/no/such/tokenizer").start())
    assert "\n" not in str(err.value)


def test_stopping_a_reply_counter_that_has_just_exited_is_not_an_error() -> None:
    """The counter is killed when it does not exit within 5 s of its input closing; on a busy machine it
    may exit between that timeout and the kill, for which the event loop raises ProcessLookupError. A run
    that ended that way lost every figure it had measured to a traceback."""
    import asyncio

    import uvloop

    from loadgen.workload.sidecar import _kill

    async def exited_then_killed() -> int | None:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        await proc.wait()
        _kill(proc)
        return proc.returncode

    assert uvloop.run(exited_then_killed()) == 0 and asyncio.run(exited_then_killed()) == 0


def test_a_session_result_runs_again_with_config(tmp_path: Path) -> None:
    from loadgen import config_file
    from loadgen.config import RunConfig

    cfg = RunConfig.from_flat(backend="openai-chat", dataset="sessions", session_turns="uniform:2:6",
                              turn_input_len="40", think_time="exponential:1.5", history="recorded",
                              session_header="X-Session-Id")
    form = config_file.to_form(cfg)
    assert form["workload"]["session-turns"] == "uniform:2:6" and form["workload"]["history"] == "recorded"
    path = tmp_path / "saved.json"
    path.write_text(json.dumps({"run_config": form}))
    again = RunConfig.from_flat(**config_file.read(str(path)))
    assert again.workload.session_spec() == cfg.workload.session_spec()
    assert again.workload.session_header == "X-Session-Id"
    plain = config_file.to_form(RunConfig.from_flat())
    assert "session-turns" not in plain["workload"]
