"""GPU telemetry: NVML on the server host, or a DCGM exporter's Prometheus page.

Both give the same fields per GPU (five gauges and the energy counter), so the result and the report do not care
where they came from. NVML (``nvidia-ml-py``, module ``pynvml``) is optional: when
it is missing or finds no driver, the run goes on and the result says why nothing
was recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loadgen.errors import LoadgenError

# field → (DCGM exporter name, unit) as dcgm-exporter's default counters name them
FIELDS: dict[str, str] = {
    "util_pct": "DCGM_FI_DEV_GPU_UTIL",
    "mem_used_mib": "DCGM_FI_DEV_FB_USED",
    "power_w": "DCGM_FI_DEV_POWER_USAGE",
    "sm_clock_mhz": "DCGM_FI_DEV_SM_CLOCK",
    "temp_c": "DCGM_FI_DEV_GPU_TEMP",
    # a counter (mJ since boot), integrated over the run's window rather than sampled (timeline.energy)
    "energy_j": "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
}
COUNTERS = ("energy_j",)
_BY_DCGM = {v: k for k, v in FIELDS.items()}
_SCALE = {"energy_j": 1e-3}  # mJ → J

GpuReading = dict[str, dict[str, float]]  # gpu id → field → value


class GpuError(LoadgenError, RuntimeError):
    """A GPU source failed to read; the message is one line."""


def parse_dcgm(text: str) -> GpuReading:
    """The five fields per ``gpu`` label from a dcgm-exporter page (other series ignored)."""
    out: GpuReading = {}
    try:
        for fam in text_string_to_metric_families(text):
            field = _BY_DCGM.get(fam.name)
            if field is None:
                continue
            for s in fam.samples:
                gpu = s.labels.get("gpu") or s.labels.get("UUID") or "0"
                out.setdefault(str(gpu), {})[field] = float(s.value) * _SCALE.get(field, 1.0)
    except ValueError as exc:
        raise GpuError(f"the DCGM exporter page is not Prometheus text ({exc})") from None
    if not out:
        raise GpuError(f"the page has none of the DCGM fields ({', '.join(sorted(_BY_DCGM))}); "
                       "is it a dcgm-exporter's /metrics?")
    return out


class DcgmSource:
    """Reads a dcgm-exporter URL through the scraper's fetcher."""

    kind = "dcgm"

    def __init__(self, url: str, fetch: Callable[[], str]) -> None:
        self.url = url
        self._fetch = fetch

    def read(self) -> GpuReading:
        return parse_dcgm(self._fetch())

    def close(self) -> None:
        pass


class NvmlSource:
    """NVML handles opened once; each read is five calls per GPU."""

    kind = "nvml"
    url = None

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles

    @classmethod
    def open(cls) -> tuple[NvmlSource | None, str]:
        """(source, message): the source when NVML works here, else None and why not."""
        try:
            import pynvml  # type: ignore[import-not-found]  # from nvidia-ml-py
        except ImportError:
            return None, ("no GPU telemetry: nvidia-ml-py is not installed (pip install nvidia-ml-py on the "
                          "server host, or give --gpu-metrics URL of a DCGM exporter)")
        try:
            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except pynvml.NVMLError as exc:
            return None, f"no GPU telemetry: NVML is not usable here ({exc}); give --gpu-metrics URL of a DCGM exporter"
        if not handles:
            pynvml.nvmlShutdown()
            return None, "no GPU telemetry: NVML sees no GPU on this host"
        return cls(pynvml, handles), f"NVML: {len(handles)} GPU(s)"

    def read(self) -> GpuReading:
        n = self._nvml
        out: GpuReading = {}
        try:
            for i, h in enumerate(self._handles):
                out[str(i)] = {
                    "util_pct": float(n.nvmlDeviceGetUtilizationRates(h).gpu),
                    "mem_used_mib": n.nvmlDeviceGetMemoryInfo(h).used / 2**20,
                    "power_w": n.nvmlDeviceGetPowerUsage(h) / 1000.0,
                    "sm_clock_mhz": float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
                    "temp_c": float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
                }
                try:  # Volta and later; mJ since the driver loaded
                    out[str(i)]["energy_j"] = n.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0
                except n.NVMLError:
                    pass
        except n.NVMLError as exc:
            raise GpuError(f"NVML read failed ({exc})") from None
        return out

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass
