"""NVIDIA devices through NVML (``pynvml``, from the ``nvidia-ml-py`` package)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import (
    BackendUnavailable,
    DriverCalls,
    GpuDevice,
    GpuProcess,
    GpuReading,
    as_text,
    describe_error,
    normalize_bus_id,
    normalize_uuid,
    to_mb,
)

# Newest first. pynvml wrappers exist for calls the installed driver may lack (the call then
# raises NVML_ERROR_FUNCTION_NOT_FOUND), and old pynvml releases lack the newer wrappers.
_PROCESS_CALLS = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)
_FUNCTION_NOT_FOUND = 13  # NVML_ERROR_FUNCTION_NOT_FOUND, for pynvml releases that do not export it
_MIG_ENABLE = 1  # NVML_DEVICE_MIG_ENABLE


class NvmlBackend:
    """Device list, memory and per-process usage from NVML."""

    name = "nvml"

    def __init__(self, nvml: Any, log: Callable[[str], None]) -> None:
        self._nvml = nvml
        self._call = DriverCalls(nvml, "NVML", log)
        self._process_calls = [c for c in _PROCESS_CALLS if hasattr(nvml, c)]

    @classmethod
    def open(cls, log: Callable[[str], None]) -> NvmlBackend:
        """Import pynvml and initialise NVML; :class:`BackendUnavailable` says what is missing."""
        try:
            import pynvml
        except Exception as exc:
            raise BackendUnavailable(
                f"pynvml cannot be imported ({describe_error(exc)}); install it with `pip install nvidia-ml-py`") from exc
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            raise BackendUnavailable(
                f"NVML cannot be initialised ({describe_error(exc)}); is the NVIDIA driver installed and "
                "is a GPU visible to this process (nvidia-smi works)?") from exc
        return cls(pynvml, log)

    def devices(self) -> list[GpuDevice]:
        """Every GPU by NVML index; a GPU in MIG mode is listed as its MIG instances instead."""
        count = self._call("nvmlDeviceGetCount") or 0
        found: list[GpuDevice] = []
        for index in range(count):
            handle = self._call("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                continue
            instances = self._mig_instances(handle)
            # A MIG parent's own process list needs admin rights and repeats its instances'.
            found.extend(self._describe(index, h) for h in instances or [handle])
        return found

    def find(self, uuid: str | None, bus_id: str | None) -> GpuDevice | None:
        """Look a device up by UUID (a full GPU or a MIG instance), else by PCI bus id."""
        bare = normalize_uuid(uuid)
        candidates = [f"GPU-{bare}", f"MIG-{bare}"] if bare else []
        for text in candidates:
            handle = self._lookup("nvmlDeviceGetHandleByUUID", text)
            if handle is not None:
                return self._describe(self._index(handle), handle)
        canonical = normalize_bus_id(bus_id)
        if canonical:
            handle = self._lookup("nvmlDeviceGetHandleByPciBusId", canonical)
            if handle is not None:
                return self._describe(self._index(handle), handle)
        return None

    def read(self, device: GpuDevice) -> GpuReading:
        """Used/total memory and the compute-process list of one device."""
        memory = self._call("nvmlDeviceGetMemoryInfo", device.handle)
        return GpuReading(
            used_mb=to_mb(getattr(memory, "used", None)),
            total_mb=to_mb(getattr(memory, "total", None)),
            processes=self._processes(device.handle),
        )

    def close(self) -> None:
        """Shut NVML down (it counts inits, so torch's own NVML use is unaffected)."""
        self._call("nvmlShutdown")

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...] | None:
        while self._process_calls:
            function = self._process_calls[0]
            try:
                raw = getattr(self._nvml, function)(handle)
            except Exception as exc:
                if getattr(exc, "value", None) == getattr(self._nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", _FUNCTION_NOT_FOUND):
                    self._process_calls.pop(0)  # the driver is older than this call; try the previous one
                    continue
                self._call.once(f"{function}:{type(exc).__name__}",
                                f"NVML: {function} failed ({describe_error(exc)}); per-process memory is unknown")
                return None
            # usedGpuMemory is None (or the raw all-ones marker in old pynvml) under WDDM and
            # for processes the driver does not account; to_mb turns both into None.
            return tuple(GpuProcess(int(p.pid), to_mb(p.usedGpuMemory)) for p in raw)
        self._call.once("no-process-call", "NVML: neither this pynvml nor this driver offers a "
                        "compute-process query; per-process memory is unknown")
        return None

    def _lookup(self, function: str, *args: Any) -> Any:
        # Not-found / not-supported are expected answers here, so they are not logged.
        try:
            return getattr(self._nvml, function)(*args)
        except Exception:
            return None

    def _index(self, handle: Any) -> int | None:
        if self._lookup("nvmlDeviceIsMigDeviceHandle", handle):
            handle = self._call("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)
        return self._call("nvmlDeviceGetIndex", handle) if handle is not None else None

    def _mig_instances(self, handle: Any) -> list[Any]:
        mode = self._lookup("nvmlDeviceGetMigMode", handle)  # NotSupported on GPUs without MIG
        if not mode or mode[0] != _MIG_ENABLE:
            return []
        slots = self._call("nvmlDeviceGetMaxMigDeviceCount", handle) or 0
        instances = (self._lookup("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot) for slot in range(slots))
        return [h for h in instances if h is not None]

    def _describe(self, index: int | None, handle: Any) -> GpuDevice:
        pci = self._lookup("nvmlDeviceGetPciInfo", handle)  # MIG instances have no PCI info of their own
        return GpuDevice(
            index=index,
            uuid=as_text(self._call("nvmlDeviceGetUUID", handle)),
            bus_id=normalize_bus_id(getattr(pci, "busId", None)),
            handle=handle,
        )
