"""Trace replay: reading Mooncake/Azure/BurstGPT traces, the replay controls, prompts whose
shared hash ids are shared tokens, and whole runs against real local servers.

The sharing checks tokenize what was built (and, in the run, what the server received)
with the tokenizer's public API; lengths are checked against the server's own count
(sim's ``usage.prompt_tokens``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from loadgen.cli import main
from loadgen.store import read_requests
from loadgen.workload import WorkloadError, WorkloadSpec, build_trace
from loadgen.workload.replay import ReplayOptions, select
from loadgen.workload.traces import Trace, read_trace
from tests.conftest import FIXTURES
from tests.loadgen.conftest import shared_leading
from tests.servers.stream_server import spawn as stream_server

FIX = FIXTURES / "workload"
MOONCAKE = FIX / "mooncake_slice.jsonl"
AZURE = FIX / "azure_code_slice.csv"
BURST = FIX / "burstgpt_sample.csv"


def mooncake_rows(path: Path = MOONCAKE) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def azure_rows() -> list[tuple[np.datetime64, int, int]]:
    lines = AZURE.read_text().splitlines()[1:]
    return [(np.datetime64(t.replace(" ", "T"), "ns"), int(c), int(g)) for t, c, g in (x.split(",") for x in lines)]


# ---------------------------------------------------------------- reading


def test_mooncake_is_read_row_for_row() -> None:
    rows = mooncake_rows()
    tr = read_trace(str(MOONCAKE), "mooncake")
    assert len(tr) == len(rows)
    t0 = rows[0]["timestamp"]
    np.testing.assert_allclose(tr.times_s, [(r["timestamp"] - t0) / 1000 for r in rows])
    assert tr.input_lens.tolist() == [r["input_length"] for r in rows]
    assert tr.output_lens.tolist() == [r["output_length"] for r in rows]
    for i in (0, 7, len(rows) - 1):
        assert tr.ids_of(i).tolist() == rows[i]["hash_ids"]


def test_azure_times_are_seconds_from_the_first_request() -> None:
    rows = azure_rows()
    tr = read_trace(str(AZURE), "azure")
    want = [(t - rows[0][0]) / np.timedelta64(1, "s") for t, _, _ in rows]
    np.testing.assert_allclose(tr.times_s, want, atol=1e-6)
    assert tr.input_lens.tolist() == [c for _, c, _ in rows]
    assert tr.hash_ids is None


def test_burstgpt_skips_and_counts_failed_rows() -> None:
    lines = [line.split(",") for line in BURST.read_text().splitlines()[1:]]
    failed = sum(1 for cols in lines if cols[3] == "0")
    tr = read_trace(str(BURST), "burstgpt")
    assert failed > 0
    assert tr.skipped_failed == failed
    assert tr.output_lens.tolist() == [int(c[3]) for c in lines if c[3] != "0"]


MOONCAKE_ROW = '{"timestamp": 0, "input_length": 1000, "output_length": 5, "hash_ids": [1, 2]}'
BAD_INPUTS = [
    # (format, file text, the line the error names, a word of the fix)
    ("mooncake", MOONCAKE_ROW + '\n{"timestamp": 5, "input_length": 10, "output_length": 5}\n', 2, "hash_ids"),
    ("mooncake", MOONCAKE_ROW + '\n{"timestamp": 5, "input_length": "12x", "output_length": 5, "hash_ids": [1]}\n',
     2, "input_length"),
    ("mooncake", '{"timestamp": 900, "input_length": 10, "output_length": 5, "hash_ids": [1]}\n' + MOONCAKE_ROW + "\n",
     2, "sort"),
    ("mooncake", '{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2]}\n', 1, "--block-size"),
    ("mooncake", "not json\n", 1, "JSON"),
    ("azure", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,4808\n", 1, "GeneratedTokens"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808,10\n"
              "2023-11-16 18:17:04.0319600,abc,8\n", 3, "ContextTokens"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,4808,10\n", 2, "TIMESTAMP"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:05.0,4808,10\n"
              "2023-11-16 18:17:04.0,3180,8\n", 3, "sort"),
    ("burstgpt", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n3,m,1,1,2,x\n1,m,1,1,2,x\n",
     3, "sort"),
]


@pytest.mark.parametrize(("fmt", "text", "line", "fix"), BAD_INPUTS)
def test_bad_trace_is_one_line_naming_file_and_line(tmp_path: Path, fmt: str, text: str, line: int, fix: str) -> None:
    path = tmp_path / f"trace.{fmt}"
    path.write_text(text)
    with pytest.raises(WorkloadError) as err:
        read_trace(str(path), fmt)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{path}:{line}:" in msg
    assert fix in msg


@pytest.mark.parametrize(("fmt", "text"), [
    ("mooncake", ""),
    ("mooncake", "\n\n"),
    ("azure", "TIMESTAMP,ContextTokens,GeneratedTokens\n"),
    ("azure", ""),
    ("burstgpt", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n0,m,5,0,5,x\n"),
])
def test_trace_without_requests_is_refused(tmp_path: Path, fmt: str, text: str) -> None:
    path = tmp_path / "empty"
    path.write_text(text)
    with pytest.raises(WorkloadError, match=str(path)) as err:
        read_trace(str(path), fmt)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- replay controls


def synthetic(times: list[float], ins: list[int], outs: list[int]) -> Trace:
    n = len(times)
    return Trace("t.jsonl", "azure", np.asarray(times, float), np.asarray(ins), np.asarray(outs),
                 np.arange(1, n + 1))


def test_window_gap_cap_and_speedup() -> None:
    tr = synthetic([0, 1, 2, 10, 11, 30], [100] * 6, [10] * 6)
    sel = select(tr, ReplayOptions(start_s=1, end_s=20, max_gap_s=2, speedup=2), min_input=1, max_model_len=None)
    assert sel.rows.tolist() == [1, 2, 3, 4]
    # gaps 1, 8, 1 → 1, 2, 1; from the first request of the window; halved
    np.testing.assert_allclose(sel.release_s, [0, 0.5, 1.5, 2.0])
    order = select(tr, ReplayOptions(timing="order"), min_input=1, max_model_len=None)
    assert order.release_s.tolist() == [0.0] * 6


def test_too_long_rows_are_counted_then_skipped_or_shortened() -> None:
    ins = [100, 5000, 200, 9000, 300, 4000]
    outs = [10, 10, 10, 10, 10, 200]
    tr = synthetic([0, 1, 2, 3, 4, 5], ins, outs)
    limit = 4096
    over = [i for i in range(6) if ins[i] + outs[i] > limit]
    sel = select(tr, ReplayOptions(), min_input=4, max_model_len=limit)
    assert sel.skipped_too_long == len(over)
    assert sel.rows.tolist() == [i for i in range(6) if i not in over]
    np.testing.assert_allclose(sel.release_s, tr.times_s[sel.rows] - tr.times_s[sel.rows[0]])
    short = select(tr, ReplayOptions(too_long="shorten"), min_input=4, max_model_len=limit)
    assert short.rows.tolist() == list(range(6))
    assert short.shortened == len(over)
    assert np.all(short.input_lens + short.output_lens <= limit)
    # --num-prompts counts the requests sent; skips are counted up to the last one sent
    first = select(tr, ReplayOptions(limit=2), min_input=4, max_model_len=limit)
    assert first.rows.tolist() == [0, 2]
    assert first.skipped_too_long == 1


def test_too_short_rows_and_empty_window() -> None:
    tr = synthetic([0, 1, 2], [2, 50, 3], [5, 5, 5])
    sel = select(tr, ReplayOptions(), min_input=4, max_model_len=None)
    assert sel.rows.tolist() == [1] and sel.skipped_too_short == 2
    with pytest.raises(WorkloadError, match="no request in the window"):
        select(tr, ReplayOptions(start_s=5), min_input=4, max_model_len=None)
    with pytest.raises(WorkloadError, match="--trace-too-long shorten"):
        select(tr, ReplayOptions(), min_input=4, max_model_len=10)


# ---------------------------------------------------------------- prompts


def server_ids(tokenizer, prompt) -> list[int]:
    """The prompt as the server tokenizes it (transformers' API: the reference)."""
    if prompt.messages is not None:
        return list(tokenizer.apply_chat_template(prompt.messages, tokenize=True, add_generation_prompt=True,
                                                  return_dict=False))
    return list(tokenizer.encode(prompt.text))


def check_sharing(prompts, hash_ids: list[list[int]], tokenizer, block: int) -> int:
    """Every prompt has its exact length; every pair shares exactly its common hash-id blocks."""
    ids = [server_ids(tokenizer, prompts[i]) for i in range(len(prompts))]
    for i, toks in enumerate(ids):
        assert len(toks) == prompts[i].input_len
    pairs = 0
    last = len(ids) - 1  # rows 0 and last share no block in the traces used here
    head = shared_leading(ids[0], ids[last])  # what every prompt starts with (BOS, the template's head) ...
    tail = shared_leading(ids[0][::-1], ids[last][::-1])  # ... and ends with (the template's tail)
    for i in range(len(ids)):
        for j in range(i):
            k = shared_leading(hash_ids[i], hash_ids[j])
            got = shared_leading(ids[i], ids[j])
            if k:
                pairs += 1
                shorter = min(len(ids[i]), len(ids[j]))
                want = min(k * block, shorter)
                if want == shorter and len(ids[i]) != len(ids[j]):
                    want -= tail  # the shorter prompt's content ends inside the shared blocks
                assert got == want, (i, j, k)
            else:
                assert got <= head, (i, j)  # ... and no more when no block is shared
    return pairs


@pytest.mark.parametrize("chat", [False, True])
def test_mooncake_prompts_share_exactly_their_shared_blocks(private_cache, tok, hf, chat: bool) -> None:
    rows = mooncake_rows()
    spec = WorkloadSpec(dataset="mooncake", dataset_path=str(MOONCAKE), chat=chat, tokenizer="deepseek-r1")
    replay = build_trace(spec, ReplayOptions(), tok)
    prompts = replay.prompts
    assert len(prompts) == len(rows)
    pairs = check_sharing(prompts, [r["hash_ids"] for r in rows], hf, 512)
    assert pairs > 0


@pytest.mark.parametrize("chat", [False, True])
def test_small_blocks_partial_last_block_and_template_head(private_cache, tmp_path: Path, tok, hf,
                                                          chat: bool) -> None:
    rows = [([1, 2, 3], 40), ([1, 2, 4], 48), ([1, 5], 20), ([1, 2, 3], 33), ([1, 2], 17), ([7], 5)]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps({"timestamp": i * 10, "input_length": n, "output_length": 3, "hash_ids": ids})
                            + "\n" for i, (ids, n) in enumerate(rows)))
    spec = WorkloadSpec(dataset="mooncake", dataset_path=str(path), chat=chat, tokenizer="deepseek-r1",
                        block_size=16)
    replay = build_trace(spec, ReplayOptions(), tok)
    assert check_sharing(replay.prompts, [ids for ids, _ in rows], hf, 16) > 0
    np.testing.assert_allclose(replay.release_s, [i * 0.01 for i in range(len(rows))])


def test_azure_prompts_are_exact_and_share_nothing(private_cache, tok, hf) -> None:
    rows = azure_rows()[:12]
    spec = WorkloadSpec(dataset="azure", dataset_path=str(AZURE), tokenizer="deepseek-r1")
    replay = build_trace(spec, ReplayOptions(limit=12), tok)
    assert [p.output_len for p in replay.prompts] == [g for _, _, g in rows]
    assert check_sharing(replay.prompts, [[-i - 1] for i in range(12)], hf, 512) == 0


def test_build_prompts_is_deterministic(private_cache, tok) -> None:
    spec = WorkloadSpec(dataset="mooncake", dataset_path=str(MOONCAKE), tokenizer="deepseek-r1", seed=3)
    a = build_trace(spec, ReplayOptions(limit=5), tok).prompts
    b = build_trace(spec, ReplayOptions(limit=5), tok).prompts
    assert [p.text for p in a] == [p.text for p in b]


# ---------------------------------------------------------------- whole runs


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def result_of(out_dir: Path) -> tuple[dict, Path]:
    (path,) = [p for p in out_dir.glob("*.json")]
    return json.loads(path.read_text()), path


def test_mooncake_replay_sends_shared_prefixes(private_cache, tmp_path: Path, hf) -> None:
    """What the server received, tokenized: shared hash ids are shared tokens; long rows skipped."""
    rows = mooncake_rows()
    limit = 2800
    too_long = sum(1 for r in rows if r["input_length"] + r["output_length"] > limit)
    assert 0 < too_long < len(rows)
    record = tmp_path / "received.jsonl"
    with stream_server("--ttft-ms", "1", "--itl-ms", "0", "--record", str(record),
                       "--max-model-len", str(limit)) as port:
        res = run_cli("--base-url", f"http://127.0.0.1:{port}", "--tokenizer", "deepseek-r1",
                      "--dataset-name", "mooncake", "--dataset-path", str(MOONCAKE), "--trace-speedup", "50",
                      "--output-dir", str(tmp_path / "out"), "--no-progress", "--server-metrics", "off")
    assert res.exit_code == 0, res.output
    result, _ = result_of(tmp_path / "out")
    trace = result["trace"]
    assert trace["skipped_too_long"] == too_long
    assert trace["requests"] == result["completed"] == len(rows) - too_long
    lag = trace["lag_ms"]
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"]
    assert isinstance(trace["behind"], bool)

    bodies = [orjson.loads(line) for line in record.read_bytes().splitlines()]
    sent = [b["prompt"] for b in bodies if b["prompt"] != "hello"]  # "hello": pre-flight's 2-token probe
    assert len(sent) == trace["requests"]
    kept = [r for r in rows if r["input_length"] + r["output_length"] <= limit]
    # match each received prompt to its row by its length and first block (sends may overtake each other)
    toks = [hf.encode(text) for text in sent]
    by_len: dict[int, list[list[int]]] = {}
    for t in toks:
        by_len.setdefault(len(t), []).append(t)
    for r in kept:
        assert by_len.get(r["input_length"]), r
    for a in range(len(kept)):
        for b in range(a):
            k = shared_leading(kept[a]["hash_ids"], kept[b]["hash_ids"])
            if not k:
                continue
            ta, tb = by_len[kept[a]["input_length"]], by_len[kept[b]["input_length"]]
            assert len(ta) == len(tb) == 1  # the sharing rows have lengths of their own in this slice
            want = min(k * 512, kept[a]["input_length"], kept[b]["input_length"])
            assert shared_leading(ta[0], tb[0]) == want


def test_azure_replay_at_trace_times_against_sim(private_cache, tmp_path: Path, sim_server) -> None:
    srv = sim_server("--max-model-len", "4096", "--tokenizer", "deepseek-r1")
    rows = azure_rows()
    speedup = 40.0
    kept = [(t, c, g) for t, c, g in rows if c + g <= 4096]
    res = run_cli("--base-url", srv.base_url, "--tokenizer", "deepseek-r1", "--dataset-name", "azure",
                  "--dataset-path", str(AZURE), "--trace-speedup", str(speedup), "--output-dir", str(tmp_path),
                  "--no-progress", "--server-metrics", "off")
    assert res.exit_code == 0, res.output
    result, path = result_of(tmp_path)
    trace = result["trace"]
    # named by the trace and its speed-up; no --input-len default claimed, in the name or vLLM's keys
    assert path.name.startswith(f"openai-cinf-azure-{AZURE.stem}-x40-") and "-i1024" not in path.name
    assert result["random_input_len"] is None and result["random_output_len"] is None
    assert trace["skipped_too_long"] == len(rows) - len(kept)
    assert result["completed"] == len(kept)
    assert result["prompt_token_mismatches"] == 0  # the sim counted every prompt as built
    assert result["prompt_verification"]["ok"]
    store = read_requests(path.with_name(path.name.replace(".json", ".requests.npy")))
    intended = np.sort(np.asarray(store["intended_ms"]))
    want_s = [(t - kept[0][0]) / np.timedelta64(1, "s") / speedup for t, _, _ in kept]
    np.testing.assert_allclose(intended - intended[0], np.asarray(want_s) * 1000, atol=1e-3)
    # lateness is the release loop's stamp against the trace's time; the send (connect, write) comes after it
    released, sent = np.asarray(store["released_ms"]), np.asarray(store["sent_ms"])
    lateness = released - np.asarray(store["intended_ms"])
    assert np.all(lateness >= 0) and np.all(sent >= released)
    assert trace["lag_ms"]["max"] == pytest.approx(float(lateness.max()), rel=1e-3, abs=1e-3)
    # the median comes from the HDR histogram: 3 significant digits (a busy machine's lateness of 300 ms is
    # kept to ~0.1 ms)
    assert trace["lag_ms"]["p50"] == pytest.approx(float(np.percentile(lateness, 50, method="inverted_cdf")),
                                                   rel=1e-3, abs=0.005)
    assert trace["lag_ms"]["p99"] <= result["p99_queue_ms"] + 0.01  # queue time adds connect + write


@pytest.mark.parametrize(("fmt", "text", "where"), [
    ("mooncake", MOONCAKE_ROW + '\n{"timestamp": 5, "input_length": 10, "output_length": 5}\n', ":2:"),
    ("mooncake", '{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2]}\n', ":1:"),
    ("mooncake", "", ""),
    ("azure", "TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.9799600,4808\n", ":1:"),
    ("burstgpt", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n3,m,1,1,2,x\n1,m,x,1,2,x\n",
     ":3:"),
])
def test_cli_refuses_bad_trace_before_sending_anything(private_cache, tmp_path: Path, fmt: str, text: str,
                                                       where: str) -> None:
    path = tmp_path / "bad.trace"
    path.write_text(text)
    record = tmp_path / "received.jsonl"
    with stream_server("--ttft-ms", "1", "--itl-ms", "0", "--record", str(record)) as port:
        res = run_cli("--base-url", f"http://127.0.0.1:{port}", "--tokenizer", "deepseek-r1",
                      "--dataset-name", fmt, "--dataset-path", str(path), "--output-dir", str(tmp_path / "out"),
                      "--no-progress")
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if "rror" in line]
    assert len(errors) == 1 and f"{path}{where}" in errors[0]
    assert not record.exists() or record.read_bytes() == b""
    assert not list((tmp_path / "out").glob("*.json"))  # nothing measured, nothing written


@pytest.mark.parametrize(("args", "message"), [
    (["--rate", "10"], "--trace-speedup"),
    (["--trace-timing", "order"], "--concurrency"),
    (["--trace-speedup", "0"], "--trace-speedup"),
    (["--trace-start", "5", "--trace-end", "2"], "--trace-end"),
])
def test_replay_options_are_checked(args: list[str], message: str) -> None:
    res = run_cli("--dataset-name", "azure", "--dataset-path", str(AZURE), *args)
    assert res.exit_code == 2
    assert message in res.output


def test_order_timing_under_a_concurrency_cap(private_cache, tmp_path: Path) -> None:
    with stream_server("--ttft-ms", "1", "--itl-ms", "0") as port:
        res = run_cli("--base-url", f"http://127.0.0.1:{port}", "--tokenizer", "deepseek-r1",
                      "--dataset-name", "burstgpt", "--dataset-path", str(BURST), "--trace-timing", "order",
                      "--concurrency", "2", "--output-dir", str(tmp_path), "--no-progress",
                      "--server-metrics", "off")
    assert res.exit_code == 0, res.output
    result, _ = result_of(tmp_path)
    trace = result["trace"]
    assert trace["timing"] == "order" and "lag_ms" not in trace
    assert trace["skipped_failed"] == 2
    assert result["completed"] == trace["requests"] == 8
    assert result["max_concurrency_observed"] <= 2
    assert not math.isnan(result["request_throughput"])


def test_replay_over_two_workers_keeps_prompts_lazy(private_cache, tmp_path: Path) -> None:
    rows = mooncake_rows()
    with stream_server("--ttft-ms", "1", "--itl-ms", "0", "--tokens", "2") as port:
        res = run_cli("--base-url", f"http://127.0.0.1:{port}", "--tokenizer", "deepseek-r1",
                      "--dataset-name", "mooncake", "--dataset-path", str(MOONCAKE), "--trace-speedup", "50",
                      "--workers", "2", "--output-dir", str(tmp_path), "--no-progress", "--server-metrics", "off")
    assert res.exit_code == 0, res.output
    result, path = result_of(tmp_path)
    assert result["workers"] == 2
    assert result["completed"] == result["trace"]["requests"] == len(rows)
    assert result["total_input_tokens"] == sum(r["input_length"] for r in rows)
    assert "lag_ms" in result["trace"]


def test_search_refuses_a_trace() -> None:
    from loadgen.search.cli import main as search_main

    res = CliRunner().invoke(search_main, ["--slo", "ttft:p99=2000", "--dataset-name", "azure",
                                           "--dataset-path", str(AZURE)])
    assert res.exit_code == 2
    assert "--trace-speedup" in res.output


def test_window_gap_cap_and_shortening_from_the_command_line(private_cache, tmp_path: Path) -> None:
    rows = azure_rows()
    times = [(t - rows[0][0]) / np.timedelta64(1, "s") for t, _, _ in rows]
    start, end, gap, limit = 0.05, 30.0, 0.5, 3000  # the window holds a 28 s idle gap
    window = [i for i, t in enumerate(times) if start <= t < end]
    over = [i for i in window if rows[i][1] + rows[i][2] > limit]
    assert window and over
    picked = [times[i] for i in window]
    span = sum(min(b - a, gap) for a, b in zip(picked[:-1], picked[1:], strict=True))
    with stream_server("--ttft-ms", "1", "--itl-ms", "0", "--tokens", "2", "--max-model-len", str(limit)) as port:
        res = run_cli("--base-url", f"http://127.0.0.1:{port}", "--tokenizer", "deepseek-r1",
                      "--dataset-name", "azure", "--dataset-path", str(AZURE), "--trace-start", str(start),
                      "--trace-end", str(end), "--trace-max-gap", str(gap), "--trace-speedup", "4",
                      "--trace-too-long", "shorten", "--output-dir", str(tmp_path), "--no-progress",
                      "--server-metrics", "off")
    assert res.exit_code == 0, res.output
    result, _ = result_of(tmp_path)
    trace = result["trace"]
    assert trace["requests"] == result["completed"] == len(window)
    assert trace["shortened"] == len(over) and trace["skipped_too_long"] == 0
    assert trace["span_s"] == pytest.approx(span / 4)
    kept = sum(rows[i][1] for i in window if i not in over)
    assert kept < result["total_input_tokens"] <= kept + len(over) * limit


def test_chat_replay_needs_a_fencing_template(private_cache, tmp_path: Path) -> None:
    """A plain-text ChatML-like template lets tokens merge across the message boundary: blocks could not be
    exact, so a chat replay is refused with the way out (completions works with the same tokenizer)."""
    from loadgen.workload.tokenizer import load_tokenizer
    from tests.conftest import tokenizer_with_template

    folder = tokenizer_with_template(
        tmp_path / "chatml-tok", "{% for m in messages %}user:\n{{ m['content'] }}\n{% endfor %}assistant:\n")
    plain = load_tokenizer(str(folder))
    spec = WorkloadSpec(dataset="mooncake", dataset_path=str(MOONCAKE), chat=True, tokenizer=str(folder))
    with pytest.raises(WorkloadError, match="completions endpoint"):
        build_trace(spec, ReplayOptions(limit=2), plain)
    text = WorkloadSpec(dataset="mooncake", dataset_path=str(MOONCAKE), tokenizer=str(folder))
    assert len(build_trace(text, ReplayOptions(limit=2), plain).prompts) == 2


def test_trace_from_a_pipe_is_read_once(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(MOONCAKE.read_bytes()), daemon=True)
    writer.start()
    tr = read_trace(str(fifo), "mooncake")
    writer.join(timeout=10)
    assert len(tr) == len(mooncake_rows())
