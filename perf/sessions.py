"""Sessions at scale: many concurrent multi-turn conversations with live history.

Runs the real CLI (pinned to one core, ``/usr/bin/time -v`` for its peak RSS) against
``tests/servers/stream_server.py`` (pinned to the other): ``--sessions`` concurrent
users (``--concurrency`` = sessions), each one session of ``--turns`` turns with a
shared system prompt, live history (every turn carries the server's actual replies,
counted turn by turn) and exponential think time. Prints per repeat and the median:
peak RSS, wall time, requests completed, loop lag p99 and whether the result says the
client was saturated. With the default ``--session-rate inf`` all users start at once, so
their first turns stream in lockstep (2,000 x 50 chunks/s at the start); ``--session-rate R``
staggers the starts. ``--baseline`` runs, alternated with it, the same number of
single random chat requests of the mean session-turn shape at the request rate the
session run reached (what the client costs without sessions).

    python perf/sessions.py --sessions 2000 --turns 8 --repeat 3 [--baseline]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from footprint import run_cli  # noqa: E402

from tests.servers.stream_server import spawn  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--turn-input-len", type=int, default=100)
    ap.add_argument("--turn-output-len", type=int, default=64)
    ap.add_argument("--system-prompt-len", type=int, default=1000)
    ap.add_argument("--think", default="exponential:2", help="--think-time for loadgen")
    ap.add_argument("--ttft-ms", type=float, default=100.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--history", default="live", choices=("live", "recorded"))
    ap.add_argument("--session-rate", default="inf",
                    help="sessions started per second (Poisson); inf: every user starts at once, in lockstep")
    ap.add_argument("--baseline", action="store_true", help="also run single requests of the same shape and rate")
    a = ap.parse_args()
    rows: dict[str, list[dict]] = {"sessions": [], "baseline": []}
    common = ["--tokenizer", "deepseek-r1", "--no-progress", "--backend", "openai-chat", "--server-metrics", "off",
              "--no-verify-prompts"]
    sessions = ["--dataset-name", "sessions", "--num-prompts", str(a.sessions), "--concurrency", str(a.sessions),
                "--session-turns", str(a.turns), "--turn-input-len", str(a.turn_input_len),
                "--turn-output-len", str(a.turn_output_len), "--system-prompt-len", str(a.system_prompt_len),
                "--think-time", a.think, "--history", a.history, "--rate", a.session_rate]
    mean_prompt = a.system_prompt_len + a.turn_input_len + (a.turns - 1) / 2 * (a.turn_input_len + a.turn_output_len)
    rate = None
    with spawn("--ttft-ms", str(a.ttft_ms), "--itl-ms", str(a.itl_ms), cpu=a.server_cpu) as port:
        for k in range(a.repeat):
            for mode in ("sessions", "baseline") if a.baseline else ("sessions",):
                args = sessions if mode == "sessions" else [
                    "--num-prompts", str(a.sessions * a.turns), "--input-len", str(int(mean_prompt)),
                    "--output-len", str(a.turn_output_len), "--rate", f"{rate:.1f}", "--arrival", "constant"]
                r, rss_kb, wall = _run(port, [*common, *args], a.client_cpu)
                if mode == "sessions":
                    rate = r["completed"] / r["duration"]
                row = {"rss_mb": rss_kb / 1024, "wall_s": wall, "completed": r["completed"],
                       "req_per_s": r["completed"] / r["duration"],
                       "sessions_completed": r.get("sessions", {}).get("completed"),
                       "lag_p99_ms": r.get("loop_lag_p99_ms"), "client_saturated": r.get("client_saturated"),
                       "max_concurrency": r.get("max_concurrency_observed")}
                rows[mode].append(row)
                print(f"run {k + 1} {mode}: " + ", ".join(
                    f"{key}={v:.1f}" if isinstance(v, float) else f"{key}={v}" for key, v in row.items()), flush=True)
    for mode, got in rows.items():
        if got:
            print(f"{mode}: median peak RSS {statistics.median(r['rss_mb'] for r in got):.1f} MB; "
                  f"median lag p99 {statistics.median(r['lag_p99_ms'] or 0 for r in got):.2f} ms; "
                  f"saturated in {sum(bool(r['client_saturated']) for r in got)} of {len(got)} runs")


def _run(port: int, args: list[str], cpu: int) -> tuple[dict, int, float]:
    """(result JSON, peak RSS KiB, wall s) of one CLI run with a private cache."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        code, wall, rss_kb, err = run_cli(["--base-url", f"http://127.0.0.1:{port}", *args, "--output-dir", str(out)],
                                          cpu, {"LOADGEN_CACHE_DIR": str(Path(tmp) / "cache")})
        if code != 0:
            sys.exit(f"loadgen failed ({code}): {err.strip().splitlines()[-1] if err.strip() else ''}")
        (path,) = out.glob("*.json")
        return json.loads(path.read_text()), rss_kb, wall


if __name__ == "__main__":
    main()
