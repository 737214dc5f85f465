"""What does scraping ``/metrics`` cost the client? CPU of the scraper thread, per scrape and per core.

Serves a page from a separate process pinned to ``--server-cpu`` (by default the
recorded vLLM 0.32 page of tests/fixtures/metrics, 50 kB, 590 lines: the size of a
real engine's page) or scrapes ``--url``, and runs loadgen's scraper thread for
``--seconds`` at ``--interval``, pinned with this process to ``--client-cpu``.
The figure is the thread's own CPU time (``time.thread_time``) over wall time:
the share of one client core the scraping takes.

    python perf/telemetry.py --seconds 30 --interval 1
    python perf/telemetry.py --seconds 10 --interval 0.1     # per-scrape cost, quicker
    python perf/telemetry.py --url http://127.0.0.1:8000/metrics --seconds 30
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from launcher.process import free_port  # noqa: E402
from loadgen.telemetry.scrape import Fetcher, Scraper  # noqa: E402

PAGE = ROOT / "tests" / "fixtures" / "metrics" / "vllm-0.32.0-cpu-under-load.txt"


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity") and cpu < os.cpu_count():
        os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def page_server(page: Path = PAGE, cpu: int | None = 0) -> Iterator[str]:
    """``page`` served as ``/metrics`` by ``python -m http.server`` in its own process on ``cpu``."""
    folder = Path(tempfile.mkdtemp(prefix="loadgen-page-"))
    shutil.copyfile(page, folder / "metrics")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: _pin(cpu),  # noqa: PLW1509
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(url, timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def measure(url: str, seconds: float, interval: float) -> dict[str, float]:
    scraper = Scraper(Fetcher(url, timeout_s=5.0).get, None, interval, None)
    scraper.scrape(full=True)  # the baseline read, outside the measured thread as in a run
    scraper.start()
    time.sleep(seconds)
    scraper.stop()
    log = scraper.log
    ticks = max(log.thread_ticks, 1)
    return {
        "scrapes": log.thread_ticks,
        "failed": log.errors,
        "cpu_s": log.thread_cpu_s,
        "wall_s": log.thread_wall_s,
        "cpu_ms_per_scrape": log.thread_cpu_s * 1000.0 / ticks,
        "core_pct": log.thread_cpu_s / log.thread_wall_s * 100.0,
        "core_pct_at_1s": log.thread_cpu_s / ticks * 100.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--url", default=None, help="scrape this live page instead of serving the recorded one")
    ap.add_argument("--page", type=Path, default=PAGE, help="page to serve (default: recorded vLLM 0.32)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    args = ap.parse_args()
    _pin(args.client_cpu)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(page_server(args.page, args.server_cpu))
        r = measure(url, args.seconds, args.interval)
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{url}: {r['scrapes']} scrapes in {r['wall_s']:.1f} s at {args.interval:g} s ({r['failed']} failed)")
    print(f"scraper thread CPU {r['cpu_s'] * 1000:.1f} ms = {r['cpu_ms_per_scrape']:.2f} ms per scrape "
          f"= {r['core_pct']:.3f} % of one core at this interval ({r['core_pct_at_1s']:.3f} % at 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
