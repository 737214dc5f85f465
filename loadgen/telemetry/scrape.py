"""The scraper: one thread that reads ``/metrics`` (and a GPU source) on a fixed interval.

It never touches the client's event loop. Its per-tick work is small on purpose:
one keep-alive GET, the vocabulary's lines only (no buckets) through the parser,
one JSON line to the side file; its thread CPU time is measured and reported. The
full page (every raw series, every bucket) is read once as the run begins and once
after it, which is what server-side percentiles over the point are computed from.

A page the scraper reads is the server's to shape, so no page can hold the run up:
every GET has an overall deadline (not only a per-read socket timeout, which a page
that drips a byte at a time never trips) and a size cap, and the first read happens
on the thread (the run waits for it only briefly, :data:`FIRST_WAIT_S`).
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import orjson

from loadgen.errors import LoadgenError
from loadgen.telemetry.gpu import GpuError, GpuReading
from loadgen.telemetry.page import Hist, Page, PageError, normalise, parse_page, vocabulary_lines
from loadgen.telemetry.vocab import choose_names

MAX_PAGE_BYTES = 1 << 20  # a vLLM page is ~50 kB; at 1 MiB a scrape during the run still costs < 1 % of a core
FIRST_WAIT_S = 0.5  # how long the run waits for the first full read (a healthy page is milliseconds)


class FetchError(LoadgenError, RuntimeError):
    """A GET that did not return a 200 page; the message is one line."""


def one_line(text: str, limit: int = 160) -> str:
    """A message quoted from elsewhere, as at most one short line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Fetcher:
    """GET one URL again and again over one keep-alive connection (reconnects on failure)."""

    def __init__(self, url: str, timeout_s: float, api_key: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"'{url}' is not an http(s) URL")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout_s
        self._ssl = ssl_context
        self._headers = {"Accept": "text/plain"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _body(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, deadline: float) -> bytes:
        """The body, read in pieces against the overall deadline and the size cap."""
        parts: list[bytes] = []
        size = 0
        slow = FetchError(f"{self.url}: no complete page within {self._timeout:g} s (the server sends it too slowly)")
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise slow
            if conn.sock is not None:
                conn.sock.settimeout(left)
            try:
                piece = resp.read1(1 << 16)
            except TimeoutError:
                raise slow from None
            if not piece:
                return b"".join(parts)
            size += len(piece)
            if size > MAX_PAGE_BYTES:
                raise FetchError(f"{self.url}: the page is larger than {MAX_PAGE_BYTES >> 20} MiB; not a metrics "
                                 "page loadgen reads (point --server-metrics at the engine's /metrics, or off)")
            parts.append(piece)

    def get(self) -> str:
        deadline = time.monotonic() + self._timeout
        for attempt in range(2):  # a kept-alive connection the server closed gets one fresh retry
            conn = self._conn or self._connect()
            self._conn = None
            try:
                conn.request("GET", self._path, headers=self._headers)
                if conn.sock is not None:
                    conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
                resp = conn.getresponse()
                body = self._body(conn, resp, deadline)
            except FetchError:
                conn.close()
                raise
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if attempt or time.monotonic() >= deadline:
                    raise FetchError(one_line(f"{self.url}: {exc.__class__.__name__}: {exc}")) from None
                continue
            if resp.will_close:
                conn.close()
            else:
                self._conn = conn
            if resp.status != 200:
                raise FetchError(f"{self.url} answered HTTP {resp.status}")
            return body.decode("utf-8", "replace")
        raise FetchError(f"{self.url}: no answer")  # pragma: no cover - the loop returns or raises

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(slots=True)
class Tick:
    """One scrape, as the summary needs it (the raw series go to the side file)."""

    t_ns: int  # perf_counter_ns at the middle of the GET: the client's clock
    values: dict[str, float]
    hists: dict[str, tuple[float, float]]  # concept → (sum, count)
    in_flight: int | None
    gpu: GpuReading | None


@dataclass
class ScrapeLog:
    """Everything the scraper collected for one point."""

    ticks: list[Tick] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # concept → raw name
    first: dict[str, Hist] = field(default_factory=dict)  # full histograms before the run
    last: dict[str, Hist] = field(default_factory=dict)  # ... and after it
    engine_names: set[str] = field(default_factory=set)
    errors: int = 0
    last_error: str | None = None
    gpu_errors: int = 0
    gpu_last_error: str | None = None
    thread_cpu_s: float = 0.0
    thread_wall_s: float = 0.0
    thread_ticks: int = 0


class Scraper:
    """Owns the fetchers, the side file and the thread; used by :class:`PointTelemetry`."""

    def __init__(self, fetch: Callable[[], str] | None, gpu: Any | None, interval_s: float,
                 side_file: Path | None, in_flight: Callable[[], int] | None = None) -> None:
        self._fetch = fetch
        self._gpu = gpu
        self.interval_s = interval_s
        self._side_path = side_file
        self._side: IO[bytes] | None = None
        self._in_flight = in_flight
        self.log = ScrapeLog()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.first_done = threading.Event()
        self.server_error: str | None = None  # why the server source was dropped after the first read
        self.gpu_error: str | None = None

    # -- one scrape ------------------------------------------------------------------
    def scrape(self, *, full: bool) -> Tick:
        """Read every source once; ``full`` parses the whole page (before/after the run)."""
        values: dict[str, float] = {}
        hists: dict[str, tuple[float, float]] = {}
        raw: dict[str, float] | None = None
        t0 = time.perf_counter_ns()
        if self._fetch is not None:
            try:
                text = self._fetch()
                page = parse_page(text if full else vocabulary_lines(text), yield_gil=True)
                self._absorb(page, full)
                vals, hs = normalise(page, self.log.names)
                values = vals
                hists = {k: (h.sum, h.count) for k, h in hs.items()}
                raw = page.raw
            except (FetchError, PageError) as exc:
                self.log.errors += 1
                self.log.last_error = one_line(str(exc))
        t_ns = (t0 + time.perf_counter_ns()) // 2
        gpu = None
        if self._gpu is not None:
            try:
                gpu = self._gpu.read()
            except (FetchError, GpuError) as exc:
                self.log.gpu_errors += 1
                self.log.gpu_last_error = one_line(str(exc))
        in_flight = self._in_flight() if self._in_flight is not None else None
        tick = Tick(t_ns, values, hists, in_flight, gpu)
        self.log.ticks.append(tick)
        self._write(tick, raw, full)
        return tick

    def _absorb(self, page: Page, full: bool) -> None:
        self.log.names.update(choose_names(page.names))
        if full:
            self.log.engine_names |= set(page.raw)
            _, hs = normalise(page, self.log.names)
            if not self.log.first:
                self.log.first = hs
            else:
                self.log.last = hs

    def _write(self, tick: Tick, raw: dict[str, float] | None, full: bool) -> None:
        if self._side is None:
            return
        line = {"mono_ns": tick.t_ns, "epoch_s": round(time.time(), 4), "full": full, "samples": raw,
                "in_flight": tick.in_flight, "gpu": tick.gpu}
        self._side.write(orjson.dumps(line) + b"\n")

    # -- the thread ------------------------------------------------------------------
    def open(self) -> None:
        if self._side_path is not None:
            self._side = open(self._side_path, "wb")  # noqa: SIM115 - closed in close()

    def drop_server(self) -> None:
        """Forget the server source (its first scrape failed) and what it left behind."""
        self.server_error = self.log.last_error
        self._fetch = None
        self.log = ScrapeLog(gpu_errors=self.log.gpu_errors, gpu_last_error=self.log.gpu_last_error)

    def drop_gpu(self) -> None:
        self.gpu_error = self.log.gpu_last_error
        self._gpu = None
        for t in self.log.ticks:
            t.gpu = None

    def first(self) -> None:
        """The first full read, which is also the check that each source answers: one that
        does not is dropped for the point (and said why, once, by the caller)."""
        try:
            self.scrape(full=True)
            if self._fetch is not None and self.log.errors:
                self.drop_server()
            if self._gpu is not None and self.log.gpu_errors:
                self.drop_gpu()
        finally:
            self.first_done.set()

    @property
    def active(self) -> bool:
        return self._fetch is not None or self._gpu is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="loadgen-telemetry", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        self.first()
        interval = self.interval_s
        next_at = time.perf_counter() + interval
        while self.active and not self._stop.wait(max(0.0, next_at - time.perf_counter())):
            self.scrape(full=False)
            self.log.thread_ticks += 1
            now = time.perf_counter()
            next_at += interval
            if next_at < now:  # a slow scrape: skip the missed ticks, keep the grid
                next_at += interval * ((now - next_at) // interval + 1)
        self.log.thread_cpu_s = time.thread_time() - cpu0
        self.log.thread_wall_s = time.perf_counter() - wall0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def close(self) -> None:
        if self._side is not None:
            self._side.close()
            self._side = None

    def write_run_line(self, start_ns: int, end_ns: int, start_epoch_s: float | None) -> None:
        """The last side-file line: the run's window on the same clock as ``mono_ns``."""
        if self._side_path is None:
            return
        with open(self._side_path, "ab") as fh:
            fh.write(orjson.dumps({"run": {"start_mono_ns": start_ns, "end_mono_ns": end_ns,
                                           "start_epoch_s": start_epoch_s}}) + b"\n")
