"""Server and GPU telemetry scraped during every load point.

``point`` is the context manager the sweep uses; ``scrape`` the thread; ``page``
the Prometheus page reader (``prometheus_client``'s parser); ``vocab`` the
normalised names per engine and version; ``gpu`` NVML and DCGM; ``timeline`` the
result entries.
"""

from loadgen.telemetry.point import SIDE_SUFFIX, PointTelemetry, server_metrics_url

__all__ = ["SIDE_SUFFIX", "PointTelemetry", "server_metrics_url"]
