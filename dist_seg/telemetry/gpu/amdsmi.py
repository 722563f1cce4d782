"""AMD devices through AMD SMI (the ``amdsmi`` Python package that ships with ROCm)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import (
    MB,
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

# The names this module relies on: present since ROCm 5.7's amdsmi (5.6 used other names).
_REQUIRED = ("amdsmi_get_processor_handles", "amdsmi_get_gpu_vram_usage", "amdsmi_get_gpu_process_list")


class AmdSmiBackend:
    """Device list, VRAM and per-process usage from AMD SMI."""

    name = "amdsmi"

    def __init__(self, smi: Any, log: Callable[[str], None]) -> None:
        self._call = DriverCalls(smi, "AMD SMI", log)

    @classmethod
    def open(cls, log: Callable[[str], None]) -> AmdSmiBackend:
        """Import and initialise amdsmi; :class:`BackendUnavailable` says what is wrong."""
        try:
            import amdsmi
        except Exception as exc:
            # Not just ImportError: amdsmi loads libamd_smi.so and reads ROCm paths at import
            # time, so a mismatched or partial ROCm install raises OSError, KeyError, ...
            raise BackendUnavailable(
                f"amdsmi cannot be imported ({describe_error(exc)}); install the amdsmi package that "
                "matches your ROCm version (it ships in /opt/rocm/share/amd_smi)") from exc
        missing = [name for name in _REQUIRED if not hasattr(amdsmi, name)]
        if missing:
            raise BackendUnavailable(
                f"this amdsmi lacks {', '.join(missing)}; it is older than ROCm 5.7, install the "
                "amdsmi package of your ROCm version")
        try:
            amdsmi.amdsmi_init()
        except Exception as exc:
            raise BackendUnavailable(
                f"AMD SMI cannot be initialised ({describe_error(exc)}); is the amdgpu driver loaded "
                "and /dev/kfd accessible?") from exc
        return cls(amdsmi, log)

    def devices(self) -> list[GpuDevice]:
        """Every GPU in AMD SMI's order."""
        handles = self._call("amdsmi_get_processor_handles") or []
        return [self._describe(index, handle) for index, handle in enumerate(handles)]

    def find(self, uuid: str | None, bus_id: str | None) -> GpuDevice | None:
        """The device with this UUID, else with this PCI address (HIP's UUID form varies by ROCm release)."""
        devices = self.devices()
        bare, canonical = normalize_uuid(uuid), normalize_bus_id(bus_id)
        for device in devices:
            if bare is not None and normalize_uuid(device.uuid) == bare:
                return device
        for device in devices:
            if canonical is not None and device.bus_id == canonical:
                return device
        return None

    def read(self, device: GpuDevice) -> GpuReading:
        """VRAM used/total (AMD SMI reports MB) and the process list of one device."""
        vram = self._call("amdsmi_get_gpu_vram_usage", device.handle)
        vram = vram if isinstance(vram, dict) else {}
        return GpuReading(
            used_mb=to_mb(vram.get("vram_used"), MB),
            total_mb=to_mb(vram.get("vram_total"), MB),
            processes=self._processes(device.handle),
        )

    def close(self) -> None:
        """Shut AMD SMI down."""
        self._call("amdsmi_shut_down")

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...] | None:
        entries = self._call("amdsmi_get_gpu_process_list", handle)
        if entries is None:
            return None
        processes = []
        for entry in entries:
            # ROCm >= 6.1 returns one dict per process; ROCm 5.7-6.0 returned process handles
            # whose details need a second call per process.
            info = entry if isinstance(entry, dict) else self._call("amdsmi_get_gpu_process_info", handle, entry)
            if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
                # A list with holes would make our own PID look absent; report no list instead.
                return None
            usage = info.get("memory_usage")
            vram = usage.get("vram_mem") if isinstance(usage, dict) else info.get("mem")
            processes.append(GpuProcess(info["pid"], to_mb(vram)))
        return tuple(processes)

    def _describe(self, index: int, handle: Any) -> GpuDevice:
        return GpuDevice(
            index=index,
            uuid=as_text(self._call("amdsmi_get_gpu_device_uuid", handle)),
            bus_id=normalize_bus_id(self._call("amdsmi_get_gpu_device_bdf", handle)),
            handle=handle,
        )
