"""The real ``loadgen`` command against real sim servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader

from loadgen.store import read_requests
from tests.conftest import REPO_ROOT, free_port, wait_for_rows
from tests.loadgen.conftest import invoke, results_in, schedule_drift, write_profile

SMALL = ["--num-prompts", "32", "--concurrency", "8", "--input-len", "32", "--output-len", "16",
         "--tokenizer", "deepseek-r1", "--no-progress"]


def signal_and_wait(proc: subprocess.Popen, sig: int) -> str:
    """Send ``sig`` to a loadgen child, wait for it (killing its group if it hangs); its stderr."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.stderr.read().decode()


def test_canonical_command_writes_every_result_form(sim_fast, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = invoke(["--base-url", sim_fast.base_url, *SMALL, "--output-dir", str(out), "--save-requests",
                "--percentiles", "50,99,99.9", "--metadata", "gpu=none", "run=1"])
    assert r.exit_code == 0, r.output + r.stderr
    (res,) = results_in(out)
    assert res["completed"] == 32 and res["failed"] == 0 and res["num_prompts"] == 32
    assert res["max_concurrency"] == 8 and res["request_rate"] == "inf" and res["model_id"] == "deepseek-r1"
    assert res["ignore_eos"] is True and res["total_output_tokens"] == 32 * 16
    assert res["input_lens"] == [32] * 32 and res["output_lens"] == [16] * 32
    # the workload built exact prompts and the server agreed on every one
    assert res["prompt_tokens_checked"] == 32 and res["prompt_token_mismatches"] == 0
    assert res["max_concurrency_observed"] <= 8
    assert "p99.9_ttft_ms" in res and res["metadata"] == {"gpu": "none", "run": "1"}
    assert res["partial"] is False and isinstance(res["client_saturated"], bool)
    assert res["versions"]["server"] and res["versions"]["loadgen"]
    assert res["config"]["concurrencies"] == [8] and res["tokenizer_id"] == "deepseek-r1"
    hlog = out / res["files"]["hlog"]
    reader = HistogramLogReader(str(hlog), HdrHistogram(1, 3_600_000_000, 3))
    tags = set()
    while (h := reader.get_next_interval_histogram()) is not None:
        tags.add(h.get_tag())
        if h.get_tag() == "itl":
            assert h.get_total_count() == 32 * 15
    reader.close()
    assert tags == {"ttft", "tpot", "itl", "e2el", "queue"}
    rows = read_requests(out / res["per_request"]["requests"])
    assert len(rows) == 32 and (rows["output_tokens"] == 16).all() and rows["ok"].all()
    chunks = read_requests(out / res["per_request"]["chunks"])
    assert chunks["tokens"].sum() == 32 * 16
    assert "Successful requests" in r.output


def test_a_set_built_without_its_tokenizer_is_recounted_beside_the_run(sim_fast, tmp_path: Path, tok,
                                                                       private_cache: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With the piece table stored, a new set is built with no tokenizer and re-counted in a
    process of its own; the result says so. A table that no longer matches the tokenizer is
    caught after the point: the point is kept and flagged, exit 2, table and set dropped."""
    from loadgen.workload import pieces, tokenizer
    from loadgen.workload.fit import view_of

    monkeypatch.setattr(tokenizer, "_LOADED", {})  # as in a fresh process (the tests share one)
    view = view_of(tok)
    pieces.store(tok.fingerprint, view.pieces, pieces.facts_of(view, view.pieces))
    run = ["--base-url", sim_fast.base_url, *SMALL, "--no-verify-prompts"]  # only the local count checks
    r = invoke([*run, "--output-dir", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output + r.stderr
    (res,) = results_in(tmp_path / "a")
    assert res["prompt_verification"] == {"local": {"checked": 32, "ok": True, "background": True}}
    assert res["prompt_token_mismatches"] == 0  # and the server agrees

    good_sets = sorted((tmp_path / "cache" / "prompts").glob("*.jsonl"))
    # pieces without their leading space merge when joined: every prompt is shorter than built
    table = view.pieces
    pieces.store(tok.fingerprint, pieces.PieceTable.of(table.ids.tolist(), [t[1:] for t in table.texts.tolist()]),
                 pieces.facts_of(view, table))
    r = invoke([*run, "--seed", "2", "--output-dir", str(tmp_path / "b")])
    assert r.exit_code == 2, r.output + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "prompt lengths re-counted during the run disagree with the set" in line and "run again" in line
    (res,) = results_in(tmp_path / "b")
    local = res["prompt_verification"]["local"]
    assert local["ok"] is False and local["mismatched"] == 32 == local["checked"]
    assert res["prompt_token_mismatches"] == 32  # the server's counts say the same
    assert pieces.cached(tok.fingerprint) is None
    assert sorted((tmp_path / "cache" / "prompts").glob("*.jsonl")) == good_sets  # the bad set is gone


def test_sweep_writes_one_file_per_point(sim_fast, tmp_path: Path) -> None:
    r = invoke(["--base-url", sim_fast.base_url, "--num-prompts", "8", "--input-len", "16", "--output-len", "4",
                "--tokenizer", "deepseek-r1", "--no-progress", "--concurrency", "1,4", "--rate", "200,inf",
                "--output-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output + r.stderr
    results = results_in(tmp_path)
    points = sorted((x["max_concurrency"], str(x["request_rate"])) for x in results)
    assert points == [(1, "200.0"), (1, "inf"), (4, "200.0"), (4, "inf")]
    assert all(x["completed"] == 8 for x in results)
    assert len(list(tmp_path.glob("*.hlog"))) == 4
    assert "sweep" in r.output


@pytest.mark.parametrize("backend", ["vllm", "openai-chat", "sglang"])
def test_every_backend_runs_with_warmup(sim_fast, tmp_path: Path, backend: str) -> None:
    r = invoke(["--base-url", sim_fast.base_url, "--backend", backend, "--num-prompts", "6", "--concurrency", "3",
                "--input-len", "48", "--output-len", "8", "--warmup", "2", "--tokenizer", "deepseek-r1",
                "--no-progress", "--label", backend, "--result-filename", "{label}-{concurrency}",
                "--output-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output + r.stderr
    res = json.loads((tmp_path / f"{backend}-3.json").read_text())
    assert res["backend"] == backend and res["completed"] == 6 and res["warmup_requests"] == 2
    assert res["num_prompts"] == 6 and res["total_output_tokens"] == 48
    assert res["prompt_token_mismatches"] == 0 and res["output_tokens_source"] == {"usage": 6}


def test_tokenizer_defaults_to_a_local_model_folder(sim_server, tmp_path: Path) -> None:
    from loadgen.workload.tokenizer import bundled_tokenizer_dir

    folder = str(bundled_tokenizer_dir())
    srv = sim_server("--model", folder)
    r = invoke(["--base-url", srv.base_url, "--num-prompts", "4", "--input-len", "16", "--output-len", "4",
                "--no-progress", "--output-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output + r.stderr
    (res,) = results_in(tmp_path)
    assert res["model_id"] == folder and res["tokenizer_id"] == folder and res["completed"] == 4


def test_served_model_name_like_vllm(sim_fast, tmp_path: Path) -> None:
    """vLLM's spelling: --model is the checkpoint (tokenizer) folder, --served-model-name what the server calls it."""
    from loadgen.workload.tokenizer import bundled_tokenizer_dir

    folder = str(bundled_tokenizer_dir())
    r = invoke(["--base-url", sim_fast.base_url, "--model", folder, "--served-model-name", "deepseek-r1",
                "--num-prompts", "2", "--input-len", "16", "--output-len", "2", "--no-progress",
                "--output-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output + r.stderr
    (res,) = results_in(tmp_path)
    assert res["model_id"] == "deepseek-r1" and res["tokenizer_id"] == folder


def test_duration_bounds_a_rate_point(sim_fast, tmp_path: Path) -> None:
    r = invoke(["--base-url", sim_fast.base_url, "--rate", "40", "--duration", "1", "--input-len", "16",
                "--output-len", "4", "--tokenizer", "deepseek-r1", "--no-progress", "--output-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output + r.stderr
    (res,) = results_in(tmp_path)
    assert 0 < res["completed"] <= 40 and res["duration"] < 3.0  # nothing released after the first second
    if not res["client_saturated"]:  # a stalled client sends less in that second, and says so
        assert res["completed"] >= 30 and res["request_throughput"] == pytest.approx(40, rel=0.35)


@pytest.mark.slow
def test_release_times_hold_the_asked_rate(sim_fast, tmp_path: Path) -> None:
    """2,000 Poisson arrivals at 400 req/s, sent for real: the send times keep the rate within 1 %."""
    r = invoke(["--base-url", sim_fast.base_url, "--rate", "400", "--num-prompts", "2000", "--input-len", "16",
                "--output-len", "2", "--tokenizer", "deepseek-r1", "--no-progress", "--save-requests",
                "--output-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output + r.stderr
    (res,) = results_in(tmp_path)
    rows = read_requests(tmp_path / res["per_request"]["requests"])
    intended = sorted(rows["intended_ms"].tolist())
    # the seeded schedule, measured between the 10th and the 10th-last release
    assert (len(intended) - 21) / ((intended[-11] - intended[10]) / 1000.0) == pytest.approx(400.0, rel=0.01)
    # the sends keep it within 1 %, unless the client says it could not: a machine too busy for 400 sends
    # a second falls behind, and then the result must say so
    drift = schedule_drift(rows["intended_ms"], rows["sent_ms"])
    assert abs(drift) < 0.01 or res["client_saturated"], (drift, res["loop_lag_p99_ms"])
    # no concurrency limit: a send is late only by scheduling (9 ms median with a core held busy), while a
    # client falling behind its schedule would be seconds late by the end of these 5 s (the figure itself
    # is measured in perf/, not here); a stalled loop is the result's to say
    assert res["median_queue_ms"] < 50.0 or res["client_saturated"], res["loop_lag_p99_ms"]


@pytest.mark.parametrize("tokens_per_chunk", [1, 2])
def test_figures_match_the_sims_timing(sim_server, tmp_path: Path, tokens_per_chunk: int) -> None:
    """Every sim step lasts 100 ms. The prefill step emits one token, each later step
    ``tokens_per_chunk`` tokens per running request (speculative-decoding-like, with running
    usage). So a 10-token request takes 1 + ceil(9 / k) steps; a k-token chunk's step
    splits into k ITL gaps of 100/k ms. The step is long against a busy machine's scheduling
    delays: a sim step that starts late is followed by steps run back to back until the sim is
    on its clock again, and with short steps those catch-up gaps would be the median.
    """
    step_ms = 100.0
    srv = sim_server("--profile", str(write_profile(tmp_path, base_ms=step_ms)),
                     "--tokens-per-chunk", str(tokens_per_chunk))
    out = tmp_path / "out"
    r = invoke(["--base-url", srv.base_url, "--backend", "vllm", "--num-prompts", "12", "--concurrency", "4",
                "--input-len", "32", "--output-len", "10", "--tokenizer", "deepseek-r1", "--no-progress",
                "--output-dir", str(out)])
    assert r.exit_code == 0, r.output + r.stderr
    (res,) = results_in(out)
    assert res["completed"] == 12 and res["total_output_tokens"] == 120
    decode_steps = math.ceil(9 / tokens_per_chunk)
    assert res["itl_samples"] == 12 * 9
    # every request has 9 gaps, so the ITL gaps add up to the decode time on any machine
    assert res["mean_itl_ms"] == pytest.approx(res["mean_tpot_ms"], rel=0.01)
    # the sim keeps absolute step deadlines: three waves of four requests, each 1 + decode_steps
    # steps long, cannot end sooner
    assert res["duration"] >= 3 * (1 + decode_steps) * step_ms / 1000 * 0.8
    if res["client_saturated"] or res.get("emulator_behind"):
        # A stalled client reads several steps' chunks in one read, under one stamp (gaps of 0);
        # a stalled sim runs its late steps back to back. The result says so; its timing is the
        # busy machine's, not the sim's.
        return
    assert res["median_itl_ms"] == pytest.approx(step_ms / tokens_per_chunk, rel=0.25)
    assert res["median_tpot_ms"] == pytest.approx(decode_steps * step_ms / 9, rel=0.25)
    # first token after one or two steps (a request may wait for the running step to end)
    assert step_ms / 2 <= res["median_ttft_ms"] <= 4 * step_ms
    assert res["median_e2el_ms"] == pytest.approx(res["median_ttft_ms"] + decode_steps * step_ms, rel=0.3)
    assert res["duration"] <= 3 * (1 + decode_steps) * step_ms / 1000 * 3


def test_rate_and_concurrency_gate_work_together(sim_server, tmp_path: Path) -> None:
    """50 req/s offered, but two slots of 100 ms requests serve only 20/s: the gate holds, queue time grows."""
    srv = sim_server("--profile", str(write_profile(tmp_path)))
    r = invoke(["--base-url", srv.base_url, "--rate", "50", "--arrival", "constant", "--concurrency", "2",
                "--num-prompts", "10", "--input-len", "16", "--output-len", "5", "--tokenizer", "deepseek-r1",
                "--no-progress", "--output-dir", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output + r.stderr
    (res,) = results_in(tmp_path / "out")
    assert res["completed"] == 10 and res["max_concurrency_observed"] == 2
    assert res["max_queue_ms"] > 100.0
    assert res["mean_ttft_from_intended_ms"] > res["mean_ttft_ms"] + 50.0


def test_faults_are_counted_not_fatal(sim_server, tmp_path: Path) -> None:
    srv = sim_server("--fault-500", "0.15", "--fault-reset-mid", "0.15", "--fault-seed", "5")
    r = invoke(["--base-url", srv.base_url, "--num-prompts", "60", "--concurrency", "8", "--input-len", "16",
                "--output-len", "16", "--tokenizer", "deepseek-r1", "--no-progress", "--output-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output + r.stderr
    (res,) = results_in(tmp_path)
    assert res["failed"] > 0 and res["completed"] > 0
    assert res["completed"] + res["failed"] == 60
    assert sum(res["errors_by_kind"].values()) == res["failed"]
    assert any(k.startswith("http_5") for k in res["errors_by_kind"]), res["errors_by_kind"]
    assert "failed" in r.output


@pytest.mark.parametrize("args,needle", [
    (["--rate", "-1"], "--rate"),
    (["--rate", "fast"], "--rate"),
    (["--concurrency", "0"], "--concurrency"),
    (["--concurrency", "1,,2"], "--concurrency"),
    (["--backend", "tgi"], "--backend"),
    (["--goodput", "ttft"], "--goodput"),
    (["--goodput", "ttft:50", "itl:5"], "--goodput"),
    (["--percentiles", "150"], "--percentiles"),
    (["--extra-body", "{nope"], "--extra-body"),
    (["--dataset-name", "sharegpt"], "--dataset-path"),
    (["--input-len", "0"], "--input-len"),
    (["--burstiness", "0"], "--burstiness"),
    (["--concurrency", "1,2", "--result-filename", "same.json"], "{concurrency}"),
    (["--metadata", "novalue"], "--metadata"),
    (["--base-url", "ftp://x"], "--base-url"),
    (["--base-url", "http://h:1", "--port", "2"], "--base-url"),
    (["--port", "70000"], "--port"),
    (["--num-prompts", "0"], "--num-prompts"),
    (["--duration", "0"], "--duration"),
    (["--timeout", "-3"], "--timeout"),
    (["--warmup", "-1"], "--warmup"),
    (["--random-range-ratio", "1.5"], "--random-range-ratio"),
    (["--arrival", "bursty"], "--arrival"),
    (["--endpoint", "v1/completions"], "--endpoint"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], needle: str) -> None:
    r = invoke(args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    closed_port = free_port()  # nothing listens there
    r = invoke(["--port", str(closed_port), "--tokenizer", "deepseek-r1", "--output-dir", str(tmp_path)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "reach" in lines[0]
    assert not list(tmp_path.glob("*.json"))


def test_unwritable_output_dir_is_one_line(sim_fast, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = invoke(["--base-url", sim_fast.base_url, "--tokenizer", "deepseek-r1", "--output-dir", str(blocker / "sub")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "--output-dir" in r.stderr


def test_unreadable_tokenizer_and_unknown_model(sim_fast, tmp_path: Path) -> None:
    r = invoke(["--base-url", sim_fast.base_url, "--tokenizer", str(tmp_path / "missing"), "--output-dir", str(tmp_path)])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "tokenizer" in r.stderr
    # the sim serves "deepseek-r1", which is no local folder: the message says how to get a tokenizer
    r = invoke(["--base-url", sim_fast.base_url, "--output-dir", str(tmp_path)])
    assert r.exit_code == 2 and "--tokenizer" in r.stderr
    r = invoke(["--base-url", sim_fast.base_url, "--model", "other", "--tokenizer", "deepseek-r1",
                "--output-dir", str(tmp_path)])
    assert r.exit_code == 2 and "other" in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["--endpoint", "/v1/models"], "405"),
    (["--extra-body", '{"stream": false, "stream_options": null}'], "not_sse"),
    (["--backend", "openai-chat", "--endpoint", "/v1/completions"], "400"),
])
def test_wrong_target_fails_before_the_run(sim_fast, tmp_path: Path, args: list[str], needle: str) -> None:
    r = invoke(["--base-url", sim_fast.base_url, "--tokenizer", "deepseek-r1", *args, "--output-dir", str(tmp_path)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_mid_run_writes_partial_results(sim_server, tmp_path: Path, sig: signal.Signals) -> None:
    """SIGINT or SIGTERM (timeout, CI, Kubernetes, docker stop) mid-run: releasing stops, in-flight
    requests get the grace period, every released request is in the partial result."""
    srv = sim_server("--profile", str(write_profile(tmp_path, base_ms=25.0)))
    out = tmp_path / "out"
    env = dict(os.environ)
    cmd = [sys.executable, "-c", "from loadgen.cli import main; main()", "--base-url", srv.base_url,
           "--num-prompts", "40", "--concurrency", "4", "--input-len", "16", "--output-len", "30",
           "--tokenizer", "deepseek-r1", "--no-progress", "--grace", "1", "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        # each request takes 30 steps x 25 ms: the store holds a first row while most are still to come
        wait_for_rows(out, "*.requests.npy", 1, proc)
    finally:
        stderr = signal_and_wait(proc, sig)
    assert proc.returncode == 128 + sig, stderr
    assert f"stopped by {sig.name}; 1 point(s) written (the last one partial)" in stderr
    (res,) = results_in(out)
    assert res["partial"] is True
    assert 0 < res["completed"] < 40
    assert res["completed"] + res["failed"] == res["num_prompts"] == res["per_request"]["rows"]
    assert not list(out.glob(".*.tmp*"))  # every file written whole


@pytest.mark.parametrize("args,needle", [
    (["--input-len", "9000"], "do not fit deepseek-r1's context of 8192 tokens"),
    (["--input-len", "100", "--output-len", "100000"], "lower --output-len to at most 8092"),
    (["--input-len", "5000", "--random-range-ratio", "0.5", "--output-len", "1000"], "7500 prompt + 1000 output"),
])
def test_requests_that_cannot_fit_the_context_fail_before_any_work(sim_fast, tmp_path: Path, args: list[str],
                                                                    needle: str) -> None:
    """The sim says max_model_len 8192 in /v1/models, as vLLM does: a run whose every request
    would be refused (HTTP 400) stops before prompts are built."""
    started = time.monotonic()
    r = invoke(["--base-url", sim_fast.base_url, "--tokenizer", "deepseek-r1", "--num-prompts", "4000", *args,
                "--output-dir", str(tmp_path)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "max_model_len" in lines[0], r.stderr
    assert time.monotonic() - started < 30  # 4,000 long prompts were never built
    assert not list(tmp_path.iterdir())


def _serve_first_stream_then_400(port_box: list[int], stop: threading.Event) -> None:
    """A server whose first completion streams (the pre-flight probe passes) and whose every later
    request is refused: a run in which nothing can succeed."""
    from aiohttp import web

    count = 0

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        if count > 1:
            return web.json_response({"error": {"message": "refused", "type": "BadRequestError"}}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for text in ("a", "b"):
            await resp.write(b'data: {"choices":[{"index":0,"text":"%s"}]}\n\n' % text.encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.get("/v1/models", models), web.post("/v1/completions", completions)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port_box.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    asyncio.run(main())


def test_a_run_where_nothing_succeeds_exits_3_with_absent_latencies(tmp_path: Path) -> None:
    port_box: list[int] = []
    stop = threading.Event()
    thread = threading.Thread(target=_serve_first_stream_then_400, args=(port_box, stop), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not port_box and time.monotonic() < deadline:
            time.sleep(0.02)
        r = invoke(["--base-url", f"http://127.0.0.1:{port_box[0]}", "--tokenizer", "deepseek-r1",
                    "--num-prompts", "5", "--input-len", "8", "--output-len", "4", "--no-progress",
                    "--output-dir", str(tmp_path)])
    finally:
        stop.set()
        thread.join(timeout=10)
    assert r.exit_code == 3, r.output + r.stderr
    assert "no request succeeded in 1 of 1 point(s) (http_400=5)" in r.stderr
    (res,) = results_in(tmp_path)
    assert res["completed"] == 0 and res["failed"] == 5
    assert res["mean_ttft_ms"] is None and res["p99_tpot_ms"] is None and res["median_itl_ms"] is None
    assert "NOTHING MEASURED" in r.output


def test_signal_while_prompts_are_built_says_nothing_was_measured(sim_fast, tmp_path: Path) -> None:
    """The prompts come from a pipe that the test holds open: the process is inside the prompt
    phase, by construction, when the signal arrives, whatever the machine's speed."""
    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)
    cmd = [sys.executable, "-m", "loadgen.cli", "--base-url", sim_fast.base_url, "--tokenizer", "deepseek-r1",
           "--dataset-name", "jsonl", "--dataset-path", str(fifo), "--output-len", "4", "--no-progress",
           "--output-dir", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    writer = None
    try:
        writer = open_fifo_writer(fifo, proc)  # succeeds only once loadgen has opened it to read prompts
        os.write(writer, b'{"prompt": "Hello there."}\n')  # a first line; the rest never comes
        assert proc.poll() is None
    finally:
        stderr = signal_and_wait(proc, signal.SIGTERM)
        if writer is not None:
            os.close(writer)
    assert proc.returncode == 143, stderr
    assert stderr.strip() == "loadgen: stopped by SIGTERM before the first point ran; nothing was measured"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def open_fifo_writer(fifo: Path, proc: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """The write end of ``fifo``, once ``proc`` has opened the read end (bounded in time)."""
    import errno

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader yet
            if exc.errno != errno.ENXIO:
                raise
        time.sleep(0.02)
    raise AssertionError(f"loadgen never opened {fifo} (exit {proc.poll()}): "
                         f"{proc.stderr.read().decode() if proc.poll() is not None else 'timed out'}")


def test_a_signal_while_results_are_written_waits_for_the_files(tmp_path: Path) -> None:
    """The window between the last response and the written files: the signal is held, the
    files are completed, then the stop is reported."""
    from loadgen import interrupts

    previous = {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS}
    interrupts.install()
    try:
        with pytest.raises(interrupts.Interrupted) as err:
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)  # delivered here, while "writing"
                time.sleep(0.05)
                (tmp_path / "result.json").write_text("{}")
        assert err.value.exit_code == 143 and (tmp_path / "result.json").exists()
        with pytest.raises(interrupts.Interrupted):  # outside a deferred block it stops at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
