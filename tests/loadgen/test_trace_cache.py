"""The prefix cache under trace replay and cache busting in the prompt: hit rate per trace
window; a Mooncake replay against the sim whose client-side hit rate matches both what the
trace's shared hash ids predict and the sim's own counters; ``--cache-salt-mode prefix``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from loadgen.cli import main
from loadgen.prefix_cache import by_window
from loadgen.store import REQUEST_DTYPE, read_requests
from loadgen.workload.salt import SALT_PIECES, PieceSalt
from tests.loadgen.conftest import get_json

BLOCK = 16  # the trace's tokens per hash id, and the sim's cache block


def store_rows(prompt_ids, cached, prompt_tokens, *, ok=None, warmup=None) -> np.ndarray:
    rows = np.zeros(len(prompt_ids), REQUEST_DTYPE)
    rows["prompt_id"] = prompt_ids
    rows["cached_tokens"] = cached
    rows["server_prompt_tokens"] = prompt_tokens
    rows["input_len"] = prompt_tokens
    rows["ok"] = True if ok is None else ok
    rows["warmup"] = False if warmup is None else warmup
    return rows


def test_by_window_groups_by_trace_time_and_keeps_not_reported_null() -> None:
    sent_rows = np.array([2, 5, 7, 9])  # trace rows sent, ascending
    times = np.array([10.0, 12.0, 19.0, 30.0])  # their trace times: span 20 s
    rows = store_rows([9, 2, 5, 7, 2], [30, 0, 10, -1, 50], [100, 100, 40, 60, 100],
                      ok=[True, True, True, True, False], warmup=[False] * 5)
    out = by_window(rows, sent_rows, times, windows=4)
    assert out["window_s"] == 5.0
    w = out["windows"]
    assert [(x["start_s"], x["end_s"]) for x in w] == [(10, 15), (15, 20), (20, 25), (25, 30)]
    # rows 2 and 5 in the first window (row 2's failed repeat is left out)
    assert w[0] | {} == {"start_s": 10, "end_s": 15, "requests": 2, "requests_reported": 2,
                         "cached_tokens": 10, "prompt_tokens": 140, "hit_rate": 10 / 140}
    # row 7 did not report: a request counted, no hit rate (not 0)
    assert w[1]["requests"] == 1 and w[1]["requests_reported"] == 0 and w[1]["hit_rate"] is None
    assert w[1]["cached_tokens"] is None
    assert w[2]["requests"] == 0 and w[2]["hit_rate"] is None
    assert w[3]["hit_rate"] == pytest.approx(0.3)  # the last row falls in the last window


def test_by_window_of_a_burst_and_of_warmup_requests() -> None:
    rows = store_rows([0, 1, 1], [4, 8, 100], [16, 16, 100], warmup=[False, False, True])
    out = by_window(rows, np.array([0, 1]), np.array([3.0, 3.0]))
    assert out["window_s"] is None  # all at one instant: one window
    (w,) = out["windows"]
    assert w["requests"] == 2 and w["hit_rate"] == pytest.approx(12 / 32)


# ---------------------------------------------------------------- a Mooncake replay against the sim


def shared_trace() -> list[dict]:
    """Rows whose hash ids share leading blocks in several ways: a prefix grown turn by turn, a
    second conversation, a branch, one-offs, an exact repeat (whose last block vLLM, and so the
    sim, recomputes), and a last block that is partial."""
    ids = [[1, 2, 3, 4], [1, 2, 3, 4, 5, 6], [7, 8], [1, 2, 9], [7, 8, 10, 11], [20],
           [1, 2, 3, 4, 5, 6, 12], [13, 14, 15], [7, 8, 10, 11, 16], [1, 2, 3, 4], [13, 14, 17, 18], [21, 22]]
    rows = []
    for i, h in enumerate(ids):  # row 11's last block is partial
        n = len(h) * BLOCK - (5 if i == 11 else 0)
        rows.append({"timestamp": 1000 * i, "input_length": n, "output_length": 3, "hash_ids": h})
    return rows


def expected_cached(rows: list[dict]) -> list[int]:
    """What a block cache serves each row when sent in order: its longest run of leading hash ids
    an earlier row also began with, in full blocks, never the prompt's last token."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for r in rows:
        h, n = r["hash_ids"], r["input_length"]
        full = n // BLOCK
        k = 0
        while k < full and tuple(h[:k + 1]) in seen:
            k += 1
        out.append(min(k, (n - 1) // BLOCK) * BLOCK)
        seen.update(tuple(h[:j + 1]) for j in range(full))
    return out


def run(out: Path, *args: str) -> tuple[dict, np.ndarray, str]:
    """A loadgen run into ``out``: its result, its per-request store and its printed output."""
    res = CliRunner().invoke(main, [*args, "--tokenizer", "deepseek-r1", "--output-dir", str(out), "--no-progress"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (path,) = out.glob("*.json")
    result = json.loads(path.read_text())
    return result, read_requests(out / result["files"]["requests"]), res.output


def replay(srv, trace: Path, out: Path, *args: str) -> tuple[dict, np.ndarray, str]:
    """One request at a time in the trace's order: each finds exactly what the rows before it left."""
    return run(out, "--base-url", srv.base_url, "--dataset-name", "mooncake", "--dataset-path", str(trace),
               "--block-size", str(BLOCK), "--trace-timing", "order", "--concurrency", "1", *args)


def cached_by_row(store: np.ndarray) -> list[int]:
    by_row = dict(zip(store["prompt_id"].tolist(), store["cached_tokens"].tolist(), strict=True))
    return [by_row[i] for i in range(len(by_row))]


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "trace.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in shared_trace()))
    return path


def test_mooncake_replay_hit_rate_agrees_with_the_trace_and_the_sims_counters(private_cache, tmp_path: Path,
                                                                              sim_server, trace_file) -> None:
    rows = shared_trace()
    srv = sim_server("--tokenizer", "deepseek-r1", "--block-size", str(BLOCK))
    result, store, output = replay(srv, trace_file, tmp_path / "out")
    assert result["completed"] == len(rows) and result["prompt_token_mismatches"] == 0
    want = expected_cached(rows)
    prompt = sum(r["input_length"] for r in rows)
    cache = result["prefix_cache"]
    client = cache["client"]
    assert client["cached_tokens"] == sum(want) and client["prompt_tokens"] == prompt
    assert 0.3 < client["hit_rate"] < 0.7
    stats = get_json(f"{srv.base_url}/sim/stats")["prefix_cache"]
    # the sim's counters also hold pre-flight's probe (a few tokens, no hit)
    assert abs(client["hit_rate"] - stats["hits"] / stats["queries"]) < 0.01
    assert abs(client["hit_rate"] - cache["server"]["hit_rate"]) < 0.01
    assert cached_by_row(store) == want

    # 12 rows one trace-second apart over 10 windows of 1.1 s: rows 0-1 in the first, one row
    # in each window after that but the last, which also takes the row at 11 s
    windows = cache["by_window"]["windows"]
    assert cache["by_window"]["window_s"] == pytest.approx(1.1)
    groups = [[0, 1]] + [[i] for i in range(2, 10)] + [[10, 11]]
    for w, g in zip(windows, groups, strict=True):
        assert w["requests"] == len(g)
        assert w["cached_tokens"] == sum(want[i] for i in g)
        assert w["hit_rate"] == pytest.approx(sum(want[i] for i in g) / sum(rows[i]["input_length"] for i in g))
    assert "by trace window (client)" in output


# ---------------------------------------------------------------- --cache-salt-mode prefix


def test_piece_salt_keeps_lengths_and_the_sharing_structure() -> None:
    pieces = [f" w{i}" for i in range(1000)]
    a = PieceSalt(pieces, "one")

    def text(*ids: int) -> str:
        return "".join(pieces[i] for i in ids)

    shared, other = text(1, 2, 3, 4, 5, 6), text(1, 2, 9, 4, 5, 6)
    words = a(shared).split(" ")
    assert len(words) == len(shared.split(" ")) and all(" " + w in pieces for w in words[1:])
    assert words[SALT_PIECES + 1:] == shared.split(" ")[SALT_PIECES + 1:]  # past the salted head: as built
    assert len(a(text(1, 2)).split(" ")) == 3  # shorter than the head
    assert a(shared + pieces[7]) == a(shared) + pieces[7]  # a shared prefix stays shared
    # prompts that differ from the third piece on differ from the third piece on
    assert a(shared).split(" ")[:3] == a(other).split(" ")[:3] and a(shared).split(" ")[3] != a(other).split(" ")[3]
    assert a(shared) == PieceSalt(pieces, "one")(shared)  # the salt alone decides (every worker alike)
    assert PieceSalt(pieces, "two")(shared) != a(shared)
    with pytest.raises(Exception, match="cache-salt-mode body"):
        a("not pieces")
    with pytest.raises(Exception, match="cache-salt-mode body"):
        a(" unknown w1")


@pytest.mark.parametrize("backend", ["openai", "openai-chat", "sglang"])
def test_prefix_salt_rerun_misses_the_warm_cache_at_exact_lengths(private_cache, tmp_path: Path, sim_server,
                                                                  backend: str) -> None:
    srv = sim_server("--tokenizer", "deepseek-r1")
    args = ["--base-url", srv.base_url, "--backend", backend, "--num-prompts", "24", "--concurrency", "4",
            "--input-len", "160", "--output-len", "4", "--seed", "7"]
    first, _, _ = run(tmp_path / "a", *args)
    again, _, _ = run(tmp_path / "b", *args)
    assert again["prefix_cache"]["client"]["hit_rate"] > 0.5  # the same prompts: a warm cache
    salted, _, output = run(tmp_path / "c", *args, "--cache-salt", "auto",
                            *(["--cache-salt-mode", "prefix"] if backend != "sglang" else []))
    cache = salted["prefix_cache"]
    assert cache["cache_salt_mode"] == "prefix" and cache["cache_salt"]
    assert cache["client"]["hit_rate"] < 0.01 and cache["server"]["hit_rate"] < 0.01
    assert cache["warning"] is None and "WARM PREFIX CACHE" not in output
    # the salt is part of the prompt's exact length: the server counts what was built
    assert salted["completed"] == salted["prompt_tokens_checked"] == 24
    assert salted["prompt_token_mismatches"] == 0
    assert cache["client"]["prompt_tokens"] == first["prefix_cache"]["client"]["prompt_tokens"] == 24 * 160


def test_prefix_salt_keeps_a_trace_replays_own_sharing(private_cache, tmp_path: Path, sim_server,
                                                       trace_file) -> None:
    """A salted rerun of a replay finds nothing of the first run, and exactly the hits the trace
    shares within itself."""
    want = expected_cached(shared_trace())
    srv = sim_server("--tokenizer", "deepseek-r1", "--block-size", str(BLOCK))
    _, first, _ = replay(srv, trace_file, tmp_path / "a")
    result, salted, _ = replay(srv, trace_file, tmp_path / "b", "--cache-salt", "auto", "--cache-salt-mode", "prefix")
    assert cached_by_row(first) == cached_by_row(salted) == want
    assert result["prompt_token_mismatches"] == 0
    assert result["prefix_cache"]["cache_salt_mode"] == "prefix"


def test_prefix_salt_refused_for_dataset_rows(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "hello there"}\n')
    res = CliRunner().invoke(main, ["--base-url", "http://127.0.0.1:9", "--dataset-name", "jsonl", "--dataset-path",
                                    str(rows), "--cache-salt", "auto", "--cache-salt-mode", "prefix"])
    assert res.exit_code == 2
    assert "--cache-salt-mode prefix" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["--base-url", "http://127.0.0.1:9", "--cache-salt-mode", "prefix"])
    assert res.exit_code == 2 and "needs --cache-salt" in res.output


# ---------------------------------------------------------------- sessions: hit rate per turn


def test_sessions_hit_rate_by_turn_against_the_sim(private_cache, tmp_path: Path, sim_server) -> None:
    """Each turn resends the conversation so far: from the second turn on the cache serves the
    history; the first turns share only the system prompt. The turns add up to the point and
    the point agrees with the sim's counters."""
    srv = sim_server("--tokenizer", "deepseek-r1")
    result, store, output = run(tmp_path / "out", "--base-url", srv.base_url, "--backend", "openai-chat",
                                "--dataset-name", "sessions", "--num-prompts", "6", "--session-turns", "3",
                                "--turn-input-len", "40", "--turn-output-len", "16", "--system-prompt-len", "64",
                                "--concurrency", "2")
    assert result["completed"] == 18 and result["prompt_token_mismatches"] == 0
    cache = result["prefix_cache"]
    turns = cache["by_turn"]
    assert [t["turn"] for t in turns] == [0, 1, 2] and all(t["requests"] == 6 for t in turns)
    for key in ("requests_reported", "cached_tokens", "prompt_tokens"):
        assert sum(t[key] for t in turns) == cache["client"][key]
    assert turns[1]["hit_rate"] > turns[0]["hit_rate"] and turns[2]["hit_rate"] > turns[0]["hit_rate"]
    assert turns[2]["hit_rate"] > 0.5  # two turns of history cached
    stats = get_json(f"{srv.base_url}/sim/stats")["prefix_cache"]
    assert abs(cache["client"]["hit_rate"] - stats["hits"] / stats["queries"]) < 0.01
    assert cache["by_window"] is None
    assert "by session turn (client)" in output
