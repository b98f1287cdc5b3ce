"""GPU memory and utilization from NVML (`nvidia-ml-py`), when a GPU and its driver are present;
an empty list otherwise (never an error: most of Shipyard's hosts have no GPU)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("shipyard.monitor")
_lock = threading.Lock()
_state = {"initialised": False, "available": False}


def _nvml():
    with _lock:
        if not _state["initialised"]:
            _state["initialised"] = True
            try:
                import pynvml

                pynvml.nvmlInit()
                _state["available"] = pynvml.nvmlDeviceGetCount() > 0
            except Exception as exc:  # no library, no driver or no device
                log.debug("NVML unavailable: %s", exc)
        if not _state["available"]:
            return None
        import pynvml

        return pynvml


def gpu_stats() -> list[dict]:
    """Per GPU: index, name, memory used and total (bytes), memory used share, utilization (0-1)."""
    nvml = _nvml()
    if nvml is None:
        return []
    gpus = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
            name = nvml.nvmlDeviceGetName(handle)
            gpus.append({"index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
                         "memory_used_bytes": int(memory.used), "memory_total_bytes": int(memory.total),
                         "memory_used_perc": memory.used / memory.total if memory.total else 0.0,
                         "utilization_perc": utilization.gpu / 100.0})
    except Exception as exc:  # a driver hiccup: no figures this time
        log.warning("NVML query failed: %s", exc)
        return []
    return gpus


def busiest_gpu() -> float | None:
    """The highest utilization (0-1) over this machine's GPUs; None without any (the autoscaler's
    secondary signal: it only counts together with a queue, as a running batch keeps it near 1)."""
    gpus = gpu_stats()
    return max(g["utilization_perc"] for g in gpus) if gpus else None
