"""Telemetry around one load point: the context manager the sweep wraps ``run(...)`` in.

As the run begins, a thread reads every source once (which is also the check that
the source exists: a server without ``/metrics`` is noted after the point, never
fatal; the run waits for that read at most ``FIRST_WAIT_S``), then scrapes on the
interval; after the run one more full read closes the bracket. :meth:`PointTelemetry.result_keys` turns it into the result's
``server_metrics`` and ``gpu_metrics`` entries.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadgen.telemetry.gpu import DcgmSource, NvmlSource
from loadgen.telemetry.scrape import FIRST_WAIT_S, Fetcher, Scraper
from loadgen.telemetry.timeline import gpu_entry, server_entry

if TYPE_CHECKING:
    from loadgen.config import RunConfig

SIDE_SUFFIX = ".metrics.jsonl"
# sim only: a run whose engine steps started late by more than this share of the model's
# planned step time on average was paced by the emulator, not by its model.
EMULATOR_LAG_SHARE = 0.05
_NOTED: set[str] = set()


def server_metrics_url(cfg: RunConfig) -> str | None:
    """``--server-metrics``: None (default) means the server's own ``/metrics``; ``off`` means none."""
    value = cfg.telemetry.server_metrics
    if value is None:
        return f"{cfg.target.base_url}/metrics"
    return None if value == "off" else value


def side_file_for(result_path: Path) -> Path:
    stem = result_path.name[: -len(".json")] if result_path.name.endswith(".json") else result_path.name
    return result_path.with_name(stem + SIDE_SUFFIX)


class PointTelemetry:
    """``with PointTelemetry(cfg, result_path, counters, note=console.print): run(...)``."""

    def __init__(self, cfg: RunConfig, result_path: Path, counters: Any = None,
                 note: Callable[[str], Any] | None = None) -> None:
        self.url = server_metrics_url(cfg)
        self.explicit = cfg.telemetry.server_metrics is not None
        self.interval_s = float(cfg.telemetry.metrics_interval_s)
        self.gpu_spec = cfg.telemetry.gpu_metrics or "auto"
        self.side_path = side_file_for(result_path)
        self.api_key = cfg.target.api_key
        self.connection = cfg.target.connection() if cfg.target.base_url.startswith("https:") else None
        self._in_flight = (lambda: counters.in_flight) if counters is not None else None
        self._note = note
        self.server_message: str | None = None
        self.gpu_message: str | None = None
        self.gpu_source: str | None = None
        self.gpu_url: str | None = None
        self.scraper: Scraper | None = None
        self._gpu: Any = None

    def _say(self, message: str) -> None:
        if self._note is not None and message not in _NOTED:
            _NOTED.add(message)
            self._note(f"note: {message}")

    def _timeout(self) -> float:
        return min(5.0, max(1.0, self.interval_s))

    def _ssl(self, url: str) -> Any:
        """The run's own --ca-cert/--insecure, for a scrape of the same https server's host."""
        if self.connection is None or not url.startswith("https:"):
            return None
        return self.connection.ssl_context()

    def __enter__(self) -> PointTelemetry:
        fetch = Fetcher(self.url, self._timeout(), self.api_key, self._ssl(self.url)).get if self.url else None
        gpu: Any = None
        if self.gpu_spec == "auto":
            gpu, msg = NvmlSource.open()
            self.gpu_message = msg
        elif self.gpu_spec != "off":
            self.gpu_url = self.gpu_spec
            gpu = DcgmSource(self.gpu_spec, Fetcher(self.gpu_spec, self._timeout(), None, self._ssl(self.gpu_spec)).get)
        if fetch is None and gpu is None:
            return self
        self._gpu = gpu
        scraper = Scraper(fetch, gpu, self.interval_s, self.side_path, self._in_flight)
        scraper.open()
        self.scraper = scraper
        scraper.start()
        scraper.first_done.wait(FIRST_WAIT_S)  # a healthy page is in by now; a slow one never holds the run
        return self

    def __exit__(self, *exc: object) -> None:
        sc = self.scraper
        if sc is None:
            return
        try:
            sc.stop()
            if sc.first_done.is_set() and sc.active:
                sc.scrape(full=True)
        finally:
            sc.close()
        self._judge(sc)

    def _judge(self, sc: Scraper) -> None:
        """Say once why a source recorded nothing, and forget a scraper with nothing left."""
        if not sc.first_done.is_set():  # the first read outlived the run: nothing to show for it
            reason = sc.log.last_error or "no complete page before the run ended"
            sc.drop_server()
            sc.server_error = reason
        if self.url is not None and sc.server_error:
            hint = "--server-metrics URL" if not self.explicit else "check --server-metrics"
            self.server_message = f"server metrics not recorded: {sc.server_error} ({hint}, or --server-metrics off)"
            self._say(self.server_message)
        if self._gpu is not None and sc.gpu_error:
            self.gpu_message = f"GPU metrics not recorded: {sc.gpu_error} (check --gpu-metrics)"
            self._say(self.gpu_message)
        elif self._gpu is not None:
            self.gpu_source = self._gpu.kind
        if not sc.active:
            self.side_path.unlink(missing_ok=True)
            self.scraper = None

    def result_keys(self, start_ns: int, end_ns: int, start_epoch_s: float | None = None) -> dict[str, Any]:
        """``{"server_metrics": ..., "gpu_metrics": ...}`` for the result (empty when both are off)."""
        out: dict[str, Any] = {}
        sc = self.scraper
        if self.url is not None:
            if sc is not None and self.server_message is None:
                out["server_metrics"] = server_entry(sc.log, self.url, self.interval_s, start_ns, end_ns,
                                                     self.side_path.name, None)
            else:
                out["server_metrics"] = {"url": self.url, "message": self.server_message, "scrapes": 0}
            share = out["server_metrics"].get("summary", {}).get("emulator_lag_share")
            if share is not None:
                out["emulator_behind"] = share > EMULATOR_LAG_SHARE
        if self.gpu_spec != "off":
            if sc is not None and self.gpu_source is not None:
                out["gpu_metrics"] = gpu_entry(sc.log, self.gpu_source, self.gpu_url, start_ns, end_ns,
                                               self.gpu_message)
            else:
                out["gpu_metrics"] = {"source": None, "url": self.gpu_url, "message": self.gpu_message}
        if sc is not None:
            sc.write_run_line(start_ns, end_ns, start_epoch_s)
        return out
