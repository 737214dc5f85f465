"""``--workers N`` and ``--ray-address``: one schedule over several client processes, one merged result.

The plan is checked as pure functions; the rest runs the real ``loadgen`` command against
real sim servers on 127.0.0.1 (and, for Ray, a real one-node Ray cluster started here).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import analysis
from launcher.process import live_tree, stop_tree
from loadgen.aggregate import Aggregate
from loadgen.scale.split import effective_workers, partition, plan_tasks, split_limit
from loadgen.scale.worker import aggregate_from_wire, aggregate_to_wire
from loadgen.schedule import ArrivalSpec, release_offsets
from loadgen.store import read_requests
from tests.conftest import REPO_ROOT, free_port, wait_for_rows

N, IN, OUT, CONC, RATE = 60, 32, 16, 8, 40.0
SCHEDULE = ["--num-prompts", str(N), "--concurrency", str(CONC), "--rate", str(RATE), "--input-len", str(IN),
            "--output-len", str(OUT), "--tokenizer", "deepseek-r1", "--no-progress", "--seed", "7",
            "--result-filename", "serving_benchmark_{concurrency}_{input_len}_{output_len}.json"]


# --- the plan ---------------------------------------------------------------------------------


def test_partition_is_the_schedule_dealt_round_robin() -> None:
    parts = partition(10, 3)
    assert [p.tolist() for p in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(np.concatenate(partition(1001, 4)).tolist()) == list(range(1001))
    assert [len(p) for p in partition(2, 4)] == [1, 1, 0, 0]


def test_concurrency_split_adds_up_and_matches_the_burst_shares() -> None:
    assert split_limit(10, 3) == [4, 3, 3]
    assert split_limit(None, 2) == [None, None]
    for limit in (2, 7, 256, 1023):
        for w in (1, 2, 3, 5):
            if limit < w:
                continue
            limits = split_limit(limit, w)
            assert sum(limits) == limit
            # a burst of `limit` requests at t=0: each worker gets exactly as many as it may send
            assert [len(p) for p in partition(limit, w)] == limits
    with pytest.raises(ValueError, match="cannot be split"):
        split_limit(1, 2)
    assert effective_workers(4, 2, 100) == 2 and effective_workers(4, None, 3) == 3 and effective_workers(2, 8, 100) == 2


def test_warm_up_prompts_are_dealt_like_the_warm_up_counts(tmp_path: Path) -> None:
    """Each worker warms up with its share of the set's own warm-up prompts, never a measured one."""
    from loadgen.config import RunConfig
    from loadgen.records import Prompt
    from loadgen.store import StoreFiles

    cfg = RunConfig.from_flat(tokenizer="deepseek-r1", num_prompts=6, warmup=5)
    prompts = [Prompt(i, 4, 4, text=f"p{i}") for i in range(6)]
    warm = [Prompt(6 + i, 4, 4, text=f"w{i}") for i in range(5)]
    store = StoreFiles(requests=tmp_path / "r.requests.npy", chunks=None, details=tmp_path / "r.details.jsonl")
    tasks = plan_tasks(cfg, None, prompts, np.zeros(6), 2, store, 2, warm)
    assert [t.warmup for t in tasks] == [3, 2]
    assert [[p.id for p in t.warm_prompts] for t in tasks] == [[6, 8, 10], [7, 9]]
    assert not {p.id for t in tasks for p in t.warm_prompts} & {p.id for p in prompts}


def test_aggregate_travels_between_processes_intact() -> None:
    a = Aggregate()
    a.metrics["ttft"].add(np.array([1.0, 2.5, 300.0]))
    b = aggregate_from_wire(aggregate_to_wire(a))
    assert b.metrics["ttft"].moments.n == 3 and b.metrics["ttft"].moments.total == pytest.approx(303.5)
    h1, h2 = a.metrics["ttft"].hist, b.metrics["ttft"].hist
    assert [h2.get_value_at_percentile(p) for p in (10, 50, 99)] == [h1.get_value_at_percentile(p) for p in (10, 50, 99)]
    assert b.metrics["itl"].moments.n == 0 and b.metrics["itl"].hist.get_total_count() == 0
    assert a.metrics["ttft"].hist is h1  # the sender's aggregate is left as it was


def test_store_rows_rebuild_the_figures_they_were_written_from() -> None:
    """Every worker dead: the figures come back from the stores (ms rows, chunk rows) as from the records."""
    from array import array

    from loadgen.records import RequestRecord
    from loadgen.store import chunk_rows, records_from_rows, request_rows

    start = 5_000_000_000
    records = []
    for i in range(30):
        sent = start + i * 7_000_000
        stamps = [sent + 20_000_000 + i * 1_000 + k * (3_000_000 + i * 10_000) for k in range(1 + i % 5)]
        ok = i % 7 != 3
        records.append(RequestRecord(
            prompt_id=i % 20, input_len=16 + i, output_len=8, intended_ns=sent - i * 1_000,
            released_ns=sent - i * 500, sent_ns=sent,
            first_ns=stamps[0] if ok else 0, last_ns=stamps[-1] if ok else 0,
            chunk_ns=array("q", stamps if ok else []), chunk_tokens=array("i", [1] * len(stamps) if ok else []),
            output_tokens=len(stamps) if ok else 0, output_tokens_source="usage", error=None if ok else "http_5xx",
            warmup=i < 4))
    original, rebuilt = Aggregate(), Aggregate()
    original.add([r for r in records if not r.warmup])
    back = records_from_rows(request_rows(records, start), chunk_rows(records))
    assert [r.warmup for r in back] == [r.warmup for r in records]
    rebuilt.add([r for r in back if not r.warmup])
    assert (rebuilt.num_requests, rebuilt.completed, dict(rebuilt.errors)) == \
        (original.num_requests, original.completed, dict(original.errors))
    for m in ("ttft", "tpot", "itl", "e2el", "queue", "release"):
        assert rebuilt.metrics[m].moments.n == original.metrics[m].moments.n
        assert rebuilt.metrics[m].moments.total == pytest.approx(original.metrics[m].moments.total, rel=1e-9)


# --- the real command -------------------------------------------------------------------------


def loadgen(*args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from loadgen.cli import main; main()", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def only_result(folder: Path) -> dict:
    (path,) = sorted(folder.glob("*.json"))
    return json.loads(path.read_text())


def field_report_collector(folder: Path) -> list[dict]:
    """The field report's collector, as its digest describes it (vLLM keys, file-name pattern)."""
    rows = []
    for path in sorted(folder.iterdir()):
        m = re.fullmatch(r"serving_benchmark_(\d+)_(\d+)_(\d+)\.json", path.name)
        if not m:
            continue
        res = json.loads(path.read_text())
        rows.append({
            "concurrency": int(m.group(1)),
            "mean TTFT(ms)": round(res["mean_ttft_ms"], 2),
            "input_throughput(tokens/s)": round(res["total_input_tokens"] / res["duration"], 2),
            "output_throughput(tokens/s)": round(res["output_throughput"], 2),
            "mean TPOT(ms)": round(res["mean_tpot_ms"], 2),
            "mean_input_len": sum(res["input_lens"]) / len(res["input_lens"]),
            "mean_output_len": sum(res["output_lens"]) / len(res["output_lens"]),
        })
    return rows


def check_merged_like_single(merged: dict, single: dict, folder: Path) -> None:
    """Counts and token totals exact, the schedule identical, latencies close."""
    assert merged["partial"] is False and merged["workers_failed"] == []
    for key in ("num_prompts", "completed", "failed", "total_input_tokens", "total_output_tokens",
                "input_lens", "output_lens", "errors"):
        assert merged[key] == single[key], key
    assert merged["completed"] == N and merged["total_output_tokens"] == N * OUT
    assert len(merged["ttfts"]) == N and len(merged["itls"]) == N
    assert sum(w["completed"] for w in merged["per_worker"]) == N
    assert merged["max_concurrency_observed"] <= CONC
    # timing is held to the fast sim's few ms only where both runs say their clients kept up
    kept_up = not merged["client_saturated"] and not single["client_saturated"]
    for m in ("ttft", "tpot", "e2el"):
        assert merged[f"mean_{m}_ms"] > 0.0 and single[f"mean_{m}_ms"] > 0.0, m
        if kept_up:
            assert abs(merged[f"mean_{m}_ms"] - single[f"mean_{m}_ms"]) < 100.0, m
    assert merged["duration"] == pytest.approx(single["duration"], abs=1.0)
    # every request was released at the single-process schedule's instant, from one common start
    rows = np.sort(np.asarray(read_requests(folder / merged["per_request"]["requests"])), order="prompt_id")
    assert rows["prompt_id"].tolist() == list(range(N))
    expected = release_offsets(N, ArrivalSpec(RATE, "poisson"), seed=7) * 1000.0
    assert np.allclose(rows["intended_ms"], expected, atol=1e-3)
    # never early; no late start, no queueing where the clients kept up: a wrong start instant
    # would be off by seconds
    lateness = rows["sent_ms"] - rows["intended_ms"]
    assert float(np.nanmin(lateness)) >= -1e-3
    if kept_up:
        assert float(np.nanmean(lateness)) < 100.0
    for w in merged["per_worker"]:
        assert w["start_late_ms"] >= 0.0 and w["loop_lag_p99_ms"] >= 0.0 and w["error"] is None
        if kept_up:
            assert w["start_late_ms"] < 250.0
    assert merged["client_saturated"] == any(w["client_saturated"] for w in merged["per_worker"])
    # readers of vLLM results read the merged one unchanged
    (row,) = field_report_collector(folder)
    assert row["concurrency"] == CONC and row["mean_input_len"] == IN and row["mean_output_len"] == OUT
    run = analysis.load(folder).iloc[0]
    assert run["completed"] == N and run["mean_ttft_ms"] == pytest.approx(merged["mean_ttft_ms"])


def test_the_workers_pipe_is_blocking_again_after_the_start() -> None:
    """The event loop watches the pipe for the start instant and leaves it non-blocking; a result
    larger than the pipe's buffer would then fail to send (EAGAIN) and the worker's share be lost."""
    import asyncio
    import multiprocessing

    import uvloop

    from loadgen.scale.procpool import PipeControl

    parent, child = multiprocessing.Pipe()
    rows = multiprocessing.get_context("fork").Array("q", 8, lock=False)
    control = PipeControl(child, rows, 0, [])
    parent.send(("start", 123))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(control.start()) == 123
    assert parent.recv() == ("ready", None)
    assert os.get_blocking(child.fileno())
    got: list = []
    reader = threading.Thread(target=lambda: got.append(parent.recv()), daemon=True)
    reader.start()
    child.send(("result", b"x" * (1 << 20)))  # a megabyte: many pipe buffers, written as the reader drains them
    reader.join(timeout=30)
    assert got == [("result", b"x" * (1 << 20))]


def test_a_result_larger_than_a_pipe_buffer_comes_back(sim_fast, tmp_path: Path) -> None:
    """Each worker's result (its per-request arrays: 100 requests x 200 ITLs) is far larger than a
    pipe's 64 KiB buffer; the pipe the event loop watched is blocking again when it is sent."""
    r = loadgen("--base-url", sim_fast.base_url, "--tokenizer", "deepseek-r1", "--num-prompts", "200",
                "--concurrency", "4", "--input-len", "16", "--output-len", "200", "--no-progress",
                "--workers", "2", "--output-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    res = only_result(tmp_path)
    assert res["completed"] == 200 and res["workers_failed"] == [] and len(res["itls"]) == 200


def test_two_workers_measure_what_one_process_measures(sim_fast, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = loadgen("--base-url", sim_fast.base_url, *SCHEDULE, "--output-dir", str(one))
    assert r1.returncode == 0, r1.stderr
    r2 = loadgen("--base-url", sim_fast.base_url, *SCHEDULE, "--output-dir", str(two), "--workers", "2",
                 "--save-requests")
    assert r2.returncode == 0, r2.stderr
    single, merged = only_result(one), only_result(two)
    chunks = np.asarray(read_requests(two / merged["per_request"]["chunks"]))
    assert len(chunks) == N * OUT and sorted(set(chunks["prompt_id"].tolist())) == list(range(N))
    assert merged["workers"] == 2 and merged["worker_mode"] == "processes"
    assert [w["num_requests"] for w in merged["per_worker"]] == [N // 2, N // 2]
    check_merged_like_single(merged, single, two)
    # one store, one interval log: the workers' own files were folded in; the server's
    # /metrics was scraped beside them, as in one process
    assert sorted(p.name for p in two.iterdir()) == sorted(
        ["serving_benchmark_8_32_16.json", "serving_benchmark_8_32_16.hlog", "serving_benchmark_8_32_16.requests.npy",
         "serving_benchmark_8_32_16.chunks.npy", "serving_benchmark_8_32_16.metrics.jsonl"])
    assert merged["server_metrics"]["scrapes"] > 0 and merged["server_metrics"]["failed_scrapes"] == 0


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (state, ppid, ...); empty when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat[stat.rfind(")") + 2:].split()


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            fields = _stat_fields(int(d))
            if fields and int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d))
    return sorted(out)


def wait_dead(pid: int, timeout_s: float = 30.0) -> None:
    """Return once a killed process (not ours to reap) is a zombie or gone: it writes nothing more."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fields = _stat_fields(pid)
        if not fields or fields[0] in ("Z", "X"):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still alive {timeout_s:.0f} s after SIGKILL")


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from loadgen.cli import main; main()", *args], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _wait_for_workers(proc: subprocess.Popen, count: int, timeout_s: float = 60.0) -> list[int]:
    """The forked workers' pids in the order they were forked (worker 0 first). Only forks count:
    they share the parent's command line; the prompt re-count runs beside them as a fresh process."""
    deadline = time.monotonic() + timeout_s
    # from the arguments, not /proc: right after exec the kernel may still show an empty command line
    parent = b"".join(os.fsencode(a) + b"\0" for a in proc.args)
    while time.monotonic() < deadline and proc.poll() is None:
        kids = [k for k in _children(proc.pid) if _cmdline(k) == parent]
        if len(kids) >= count:
            return kids
        time.sleep(0.05)
    raise AssertionError(f"no {count} workers appeared (exit {proc.poll()}): "
                         f"{(proc.stdout.read() + proc.stderr.read()).decode()[-2000:] if proc.poll() is not None else ''}")


def _slow_sim(sim_server, tmp_path: Path):
    profile = {"base_ms": 25.0, "decode_seq_ms": 0.0, "prefill_token_ms": 0.0, "prefill_step_ms": 0.0,
               "max_num_seqs": 64, "max_batched_tokens": 65536, "kv_tokens": 10_000_000}
    path = tmp_path / "steady.json"
    path.write_text(json.dumps(profile))
    return sim_server("--profile", str(path))


SLOW = ["--num-prompts", "40", "--concurrency", "4", "--input-len", "16", "--output-len", "30",
        "--tokenizer", "deepseek-r1", "--no-progress", "--workers", "2", "--grace", "1"]
HUNG = [*SLOW[:1], "80", *SLOW[2:]]  # 80 requests: 15 s per worker, the hung one is caught long before


def _fault_run(sim_server, tmp_path: Path, schedule: list[str], act, timeout_s: float):
    """loadgen with 2 workers on a slow sim: once both workers have stored a row (inside the measured
    phase), ``act(proc, worker_pids)``; then wait for the end. (proc, output folder, worker pids)."""
    srv = _slow_sim(sim_server, tmp_path)
    out = tmp_path / "out"
    proc = _start(["--base-url", srv.base_url, *schedule, "--output-dir", str(out)])
    try:
        workers = _wait_for_workers(proc, 2)
        # 30 steps x 25 ms per request, 2 at a time per worker: mid-run once both have stored a row
        wait_for_rows(out, "*.w[01].requests.npy", 2, proc)
        act(proc, workers)
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc, out, workers


def test_a_killed_worker_leaves_a_partial_result_naming_it(sim_server, tmp_path: Path) -> None:
    """SIGKILL one worker mid-run: the other finishes its share, the result says who is missing."""
    proc, out, _ = _fault_run(sim_server, tmp_path, SLOW, lambda p, w: os.kill(w[1], signal.SIGKILL), 90)
    stderr = proc.stderr.read().decode()
    assert proc.returncode == 0, stderr
    res = only_result(out)
    assert res["partial"] is True and res["workers_failed"] == [1]
    dead, alive = res["per_worker"][1], res["per_worker"][0]
    assert "SIGKILL" in dead["error"] and alive["error"] is None
    # nothing the surviving worker measured is lost: its whole share is in the figures and the store
    assert alive["completed"] == 20 and res["completed"] == 20 and res["num_prompts"] == 20
    assert res["per_request"]["rows"] == 20 and res["per_request"]["complete"] is False
    assert "worker 1" in res["per_request"]["error"] and "SIGKILL" in res["per_request"]["error"]
    assert (out / dead["store"]).exists()  # what the dead worker had stored stays, by itself
    stdout = proc.stdout.read().decode()
    assert "partial" in stdout
    # the summary tells the truth: the figures leave the dead worker out, its rows are in its own file,
    # and the concurrency the run kept is said beside the one asked for
    assert "kept in memory" not in stdout and "were not saved" not in stdout
    flat = " ".join(stdout.split())  # the table may wrap its title
    assert dead["store"] in stdout and "concurrency=4 (2 after worker(s) 1 failed)" in flat, stdout
    assert not _children(proc.pid)


def test_every_worker_killed_leaves_a_partial_result_rebuilt_from_their_rows(sim_server, tmp_path: Path) -> None:
    stored: dict[int, np.ndarray] = {}

    def kill_all(proc: subprocess.Popen, workers: list[int]) -> None:
        # The parent is held stopped meanwhile: once it sees its workers dead, it merges their stores
        # into one and removes them, which could happen before this test has read them.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            for pid in workers:
                wait_dead(pid)
            for k in (0, 1):  # what each had stored when it died (a killed worker writes nothing more)
                (store,) = out_dir.glob(f"*.w{k}.requests.npy")
                stored[k] = np.array(read_requests(store))
        finally:
            os.kill(proc.pid, signal.SIGCONT)

    out_dir = tmp_path / "out"
    proc, out, _ = _fault_run(sim_server, tmp_path, [*HUNG, "--save-requests"], kill_all, 60)
    stderr = proc.stderr.read().decode()
    lines = stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, stderr
    assert "every worker failed" in lines[0] and "SIGKILL" in lines[0] and "partial result rebuilt" in lines[0]
    res = only_result(out)
    rows = np.concatenate([stored[0], stored[1]])
    measured = rows[~rows["warmup"]]
    assert res["partial"] is True and res["rebuilt_from_stores"] is True and res["workers_failed"] == [0, 1]
    assert res["num_prompts"] == len(measured) and res["completed"] == int(measured["ok"].sum()) > 0
    assert all("SIGKILL" in w["error"] and w["rebuilt_rows"] == len(stored[w["worker"]]) for w in res["per_worker"])
    # the figures are the stored rows' own: TTFT from the rows, ITL from the chunk store
    ttft = (measured["first_ms"] - measured["sent_ms"])[measured["ok"]]
    assert sorted(res["ttfts"]) == pytest.approx(sorted(ttft / 1000.0), rel=1e-6)
    # gaps read in one receive after a stall are 0, so only a killed run that kept up has a median > 0
    assert res["median_itl_ms"] is not None and res["median_itl_ms"] >= 0
    if not res["client_saturated"]:
        assert res["median_itl_ms"] > 0
    assert res["per_request"]["rows"] == len(rows) and res["per_request"]["complete"] is False
    assert "rebuilt" in res["per_request"]["error"]
    assert len(read_requests(out / res["per_request"]["requests"])) == len(rows)
    assert not list(out.glob("*.w[01].requests.npy")), "the workers' rows moved into the point's store"


def test_sigterm_to_the_parent_stops_every_worker_and_keeps_their_requests(sim_server, tmp_path: Path) -> None:
    proc, out, workers = _fault_run(sim_server, tmp_path, SLOW, lambda p, w: p.send_signal(signal.SIGTERM), 60)
    assert proc.returncode == 143, proc.stderr.read().decode()
    res = only_result(out)
    assert res["partial"] is True and res["workers_failed"] == []
    assert all(w["partial"] and w["error"] is None and w["completed"] > 0 for w in res["per_worker"])
    assert 0 < res["completed"] < 40 and res["completed"] + res["failed"] == res["num_prompts"]
    assert res["per_request"]["rows"] == res["num_prompts"] and res["per_request"]["complete"] is True
    assert not [p for p in workers if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text()]


def test_a_stopped_worker_is_killed_and_named_and_the_point_finishes(sim_server, tmp_path: Path) -> None:
    """kill -STOP one worker mid-run: its heartbeat stops, the parent kills it, the other finishes its share."""
    proc, out, _ = _fault_run(sim_server, tmp_path, HUNG, lambda p, w: os.kill(w[1], signal.SIGSTOP), 120)
    stderr = proc.stderr.read().decode()
    assert proc.returncode == 0, stderr
    res = only_result(out)
    assert res["partial"] is True and res["workers_failed"] == [1]
    assert "stopped reporting" in res["per_worker"][1]["error"]
    assert res["per_worker"][0]["completed"] == 40 and res["completed"] == 40
    assert "worker 1" in proc.stdout.read().decode()
    assert not _children(proc.pid)


class _StallingPrompts(list):
    """A worker's prompts whose item ``at`` blocks the event loop (a blocking call inside the loop) while
    the process, and its heartbeat thread, run on: the fault only the loop's own heartbeat can see."""

    def __init__(self, prompts: list, at: int) -> None:
        super().__init__(prompts)
        self.at = at

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        if isinstance(i, int) and i == self.at:
            time.sleep(3600)  # killed long before: the parent's loop watch ends it
        return super().__getitem__(i)

    def __iter__(self):  # noqa: ANN204
        return (self[i] for i in range(len(self)))


def test_a_worker_whose_event_loop_is_stuck_is_killed_and_named(sim_fast, tmp_path: Path) -> None:
    from loadgen.client.target import Target
    from loadgen.records import Prompt
    from loadgen.scale import procpool
    from loadgen.scale.worker import SummedCounters, WorkerTask
    from loadgen.store import StoreFiles

    target = Target(sim_fast.base_url, "openai", "deepseek-r1")
    tasks = []
    for k in range(2):
        prompts = [Prompt(id=2 * i + k, input_len=8, output_len=4, text="hello there") for i in range(40)]
        tasks.append(WorkerTask(
            index=k, target=target, prompts=prompts if k == 0 else _StallingPrompts(prompts, 5),
            offsets_s=[0.0] * 40, concurrency=2, warmup=0, duration_s=None, grace_s=1.0,
            store=StoreFiles(tmp_path / f"w{k}.requests.npy", None, tmp_path / f"w{k}.details.jsonl")))
    t0 = time.monotonic()
    outcomes = procpool.run_tasks(tasks, counters=SummedCounters(2), on_tick=lambda: None)
    took = time.monotonic() - t0
    assert outcomes[1].result is None and "event loop made no progress" in (outcomes[1].error or "")
    done0 = aggregate_from_wire(outcomes[0].result.aggregate) if outcomes[0].result is not None else None
    assert done0 is not None and done0.completed == 40, done0 and dict(done0.errors)
    # found by the loop's deadline, not by anything else (the stall itself lasts an hour)
    assert took < procpool.LOOP_SILENT_AFTER_S + 60


def test_sigterm_ends_the_parent_in_bounded_time_with_a_stopped_worker(sim_server, tmp_path: Path) -> None:
    def stop_one_then_term(proc: subprocess.Popen, workers: list[int]) -> None:
        os.kill(workers[1], signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)

    # grace 1 s + the 5 s heartbeat (+ 10 s slack at most), whatever the machine
    proc, out, workers = _fault_run(sim_server, tmp_path, HUNG, stop_one_then_term, 40)
    assert proc.returncode == 143, proc.stderr.read().decode()
    res = only_result(out)
    assert res["partial"] is True and res["workers_failed"] == [1]
    assert res["per_worker"][0]["partial"] and res["per_worker"][0]["completed"] > 0
    assert not [p for p in workers if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text()]


def test_ray_address_without_ray_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from loadgen.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    r = CliRunner().invoke(main, ["--ray-address", "auto", "--tokenizer", "deepseek-r1"])
    assert r.exit_code == 2
    (line,) = r.stderr.strip().splitlines()
    assert "pip install 'loadgen[ray]'" in line


def test_bad_worker_count_is_a_one_line_error() -> None:
    r = loadgen("--workers", "0", "--tokenizer", "deepseek-r1", timeout=60)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "--workers must be >= 1" in line


@pytest.fixture
def http_port() -> Iterator[int]:
    """An ordinary HTTP server on 127.0.0.1: listening, answering, and not Ray."""
    import http.server
    import threading

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("where", ["nothing", "http", "bad-port", "env-garbage"])
def test_an_address_without_a_ray_cluster_is_one_line_in_seconds(sim_fast, http_port: int, tmp_path: Path,
                                                                  where: str) -> None:
    pytest.importorskip("ray")
    address = {"nothing": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{http_port}",
               "bad-port": "127.0.0.1:70000", "env-garbage": "auto"}[where]
    env = {**os.environ, "RAY_ADDRESS": "not an address" if where == "env-garbage" else ""}
    started = time.monotonic()
    r = loadgen("--base-url", sim_fast.base_url, "--ray-address", address, "--workers", "2", "--num-prompts", "4",
                "--tokenizer", "deepseek-r1", "--no-progress", "--output-dir", str(tmp_path), timeout=120, env=env)
    took = time.monotonic() - started
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    expect = {"nothing": "nothing listens there", "http": "not a Ray cluster (an HTTP/1 server answers there)",
              "bad-port": "is not HOST:PORT", "env-garbage": "RAY_ADDRESS 'not an address' is not HOST:PORT"}[where]
    assert expect in lines[0] and "ray start --head" in lines[0]
    assert took < 60  # Ray's own retries take minutes; the check itself takes at most a few seconds


# --- Ray --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A one-node Ray cluster on 127.0.0.1 in its own process group; stopped (the whole group) after."""
    pytest.importorskip("ray")
    import tempfile

    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="lgray-"))  # short: Ray's socket paths must fit 107 bytes
    log = tmp_path_factory.mktemp("ray") / "ray.log"
    actor_tmp = temp / "actors"  # where the actors keep their stores while they run
    actor_tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": str(actor_tmp)}
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin), "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
           "--num-cpus", "2", "--include-dashboard=false", "--temp-dir", str(temp), "--block"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while b"will now block" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", env, proc.pid, actor_tmp
    finally:
        # some of Ray's processes outwait SIGTERM by far: the group gets SIGKILL after 5 s
        stop_tree(proc.pid, proc.pid, timeout_s=5.0, popen=proc)
        assert not live_tree(proc.pid, proc.pid), "Ray processes survived the cluster's stop"
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def test_ray_actors_measure_what_one_process_measures(sim_fast, ray_cluster, tmp_path: Path) -> None:
    from loadgen.scale.ray_pool import reachability_problem

    address, env, _, _ = ray_cluster
    assert reachability_problem(address) is None  # a real GCS passes the quick check
    one, two = tmp_path / "one", tmp_path / "ray"
    r1 = loadgen("--base-url", sim_fast.base_url, *SCHEDULE, "--output-dir", str(one))
    assert r1.returncode == 0, r1.stderr
    r2 = loadgen("--base-url", sim_fast.base_url, *SCHEDULE, "--output-dir", str(two), "--workers", "2",
                 "--ray-address", address, env=env, timeout=240)
    assert r2.returncode == 0, r2.stderr
    merged = only_result(two)
    assert merged["workers"] == 2 and merged["worker_mode"] == "ray"
    assert all(abs(w["clock_offset_ms"]) < 50.0 for w in merged["per_worker"])  # one machine: one wall clock
    check_merged_like_single(merged, only_result(one), two)


def _actor_pids(pgid: int) -> list[int]:
    pids = []
    for pid in live_tree(pgid, pgid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::WorkerActor"):
                pids.append(pid)
        except OSError:
            pass
    return sorted(pids)


def test_a_lost_ray_actor_leaves_a_partial_result_naming_it(sim_server, ray_cluster, tmp_path: Path) -> None:
    address, env, pgid, actor_tmp = ray_cluster
    srv = _slow_sim(sim_server, tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", "from loadgen.cli import main; main()", "--base-url", srv.base_url,
                             *SLOW, "--output-dir", str(out), "--ray-address", address], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(_actor_pids(pgid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        actors = _actor_pids(pgid)
        assert len(actors) >= 2, proc.stderr.read().decode() if proc.poll() is not None else "no actors"
        # mid-run (7.5 s per worker) once both actors have stored a row (in their own temporary folders)
        wait_for_rows(actor_tmp, "loadgen-actor-*/*.w[01].requests.npy", 2, proc, timeout_s=120)
        os.kill(actors[-1], signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()
    res = only_result(out)
    assert res["partial"] is True and len(res["workers_failed"]) == 1
    (k,) = res["workers_failed"]
    dead, alive = res["per_worker"][k], res["per_worker"][1 - k]
    assert dead["error"] and alive["error"] is None and alive["completed"] == 20
    assert res["completed"] == 20 and res["per_request"]["rows"] == 20
    assert f"worker {k}" in res["per_request"]["error"]


# --- sessions over workers ------------------------------------------------------------------

SESSIONS = ["--backend", "openai-chat", "--tokenizer", "deepseek-r1", "--dataset-name", "sessions",
            "--num-prompts", "8", "--session-turns", "3", "--turn-input-len", "20", "--turn-output-len", "8",
            "--think-time", "0.02", "--concurrency", "4", "--session-header", "X-Session-Id", "--no-progress",
            "--server-metrics", "off"]


def check_sessions_stay_on_one_worker(folder: Path) -> None:
    """Every turn of a session in one worker's part of the merged store; all of them exact."""
    merged = only_result(folder)
    assert merged["workers"] == 2 and merged["workers_failed"] == []
    assert merged["sessions"]["sessions"] == 8 and merged["sessions"]["completed"] == 8
    assert merged["completed"] == 24 and merged["prompt_token_mismatches"] == 0
    rows = read_requests(next(folder.glob("*.requests.npy")))
    # the merged store is the workers' stores one after the other, in worker order
    bounds = np.cumsum([0, *(w["store_rows"] for w in merged["per_worker"])])
    assert bounds[-1] == len(rows)
    owner: dict[int, int] = {}
    for k in range(2):
        part = rows[bounds[k]:bounds[k + 1]]
        assert len(part) > 0  # both workers had sessions to run
        for s in set(part["session"].tolist()):
            assert owner.setdefault(s, k) == k, f"session {s} ran on workers {owner[s]} and {k}"
            assert sorted(part["turn"][part["session"] == s].tolist()) == [0, 1, 2]
    assert sorted(owner) == list(range(8))


def test_sessions_stay_on_one_local_worker(sim_fast, tmp_path: Path) -> None:
    proc = loadgen("--base-url", sim_fast.base_url, *SESSIONS, "--workers", "2", "--output-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    check_sessions_stay_on_one_worker(tmp_path)


def test_sessions_stay_on_one_ray_actor(sim_fast, ray_cluster, tmp_path: Path) -> None:
    address, env, _, _ = ray_cluster
    proc = loadgen("--base-url", sim_fast.base_url, *SESSIONS, "--workers", "2", "--ray-address", address,
                   "--output-dir", str(tmp_path), env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert only_result(tmp_path)["worker_mode"] == "ray"
    check_sessions_stay_on_one_worker(tmp_path)
