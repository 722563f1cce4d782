"""What the GPU driver says about memory: the backend interface, its records, and normalisers.

Two driver libraries answer the same three questions (which devices are there, how much
memory does each use, which processes use it and how much): NVIDIA's NVML through
``pynvml`` (:mod:`.nvml`) and AMD SMI through ``amdsmi`` (:mod:`.amdsmi`). This module holds
what both share, so the VRAM sampler and the standalone process sampler stay ignorant of
which vendor they talk to. It imports no other module of the package.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

BackendName = Literal["nvml", "amdsmi"]

MB = 1024 * 1024


class BackendUnavailable(Exception):
    """The driver library cannot be imported or initialised, or it sees no device."""


@dataclass(frozen=True)
class GpuDevice:
    """One device as the driver library enumerates it (a MIG instance counts as one)."""

    index: int | None
    uuid: str | None
    bus_id: str | None
    handle: Any


@dataclass(frozen=True)
class GpuProcess:
    """One process holding memory on a device; ``used_mb`` is None when the driver cannot say."""

    pid: int
    used_mb: float | None


@dataclass(frozen=True)
class GpuReading:
    """One look at one device. Any figure the driver refused to give is None.

    ``processes`` is None when the process list itself could not be read, and an empty
    tuple when it was read and nothing is running.
    """

    used_mb: float | None
    total_mb: float | None
    processes: tuple[GpuProcess, ...] | None


class GpuBackend(Protocol):
    """The driver-library interface shared by NVML and AMD SMI."""

    name: BackendName

    def devices(self) -> list[GpuDevice]:
        """Every device the driver sees, in the driver's own order."""

    def find(self, uuid: str | None, bus_id: str | None) -> GpuDevice | None:
        """The device with this UUID, else with this PCI bus id; None if neither matches."""

    def read(self, device: GpuDevice) -> GpuReading:
        """Memory figures and process list of one device; never raises for a failed query."""

    def close(self) -> None:
        """Release the driver library."""


class LogOnce:
    """Forwards each distinct message key to ``log`` the first time only.

    Driver errors repeat every sample; one line per kind of problem is what a user can act
    on, a line per second is noise that hides it.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, key: str, message: str) -> None:
        """Log ``message`` unless a message with this ``key`` was logged before."""
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        self._log(message)


class DriverCalls:
    """Calls into a driver module where a failed query means "unknown", not a crash.

    A failure is logged once per function and kind of error, and the call yields None:
    one unsupported query (a consumer card without per-process accounting, a MIG instance
    without privileges) must not stop the other figures from being recorded.
    """

    def __init__(self, module: Any, vendor: str, log: Callable[[str], None]) -> None:
        self.module = module
        self.vendor = vendor
        self.once = LogOnce(log)

    def __call__(self, function: str, *args: Any) -> Any:
        """``module.function(*args)``, or None after logging the error once."""
        try:
            return getattr(self.module, function)(*args)
        except Exception as exc:
            self.once(f"{function}:{type(exc).__name__}",
                      f"{self.vendor}: {function} failed ({describe_error(exc)}); that figure is recorded as unknown")
            return None


def as_text(value: Any) -> str | None:
    """A driver string as ``str``: old pynvml releases and some AMD SMI calls return bytes."""
    if value is None:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text.strip().strip("\0") or None


def normalize_uuid(uuid: str | bytes | None) -> str | None:
    """Lower-case hex UUID without the ``GPU-`` / ``MIG-`` prefix drivers put in front."""
    text = as_text(uuid)
    if text is None:
        return None
    text = text.lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text or None


def normalize_bus_id(bus_id: str | bytes | None) -> str | None:
    """Canonical ``dddd:bb:dd.f`` PCI address from NVML's 8-digit or AMD's 4-digit domain form."""
    text = as_text(bus_id)
    if text is None:
        return None
    try:
        head, function = text.rsplit(".", 1) if "." in text else (text, "0")
        parts = head.split(":")
        if len(parts) == 2:
            parts.insert(0, "0")
        domain, bus, dev = (int(p, 16) for p in parts)
        return f"{domain:04x}:{bus:02x}:{dev:02x}.{int(function, 16):x}"
    except ValueError:
        return None


def to_mb(value: Any, unit_bytes: int = 1) -> float | None:
    """``value`` (counted in units of ``unit_bytes`` bytes) in MB; None for "not available" forms."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # AMD SMI answers "N/A" strings, NVML None, for figures it cannot give
    if value < 0 or value >= 2**63:
        return None  # NVML_VALUE_NOT_AVAILABLE is all bits set in an unsigned field
    return value * unit_bytes / MB


def describe_error(exc: BaseException) -> str:
    """``Type: message`` for log lines, with the type even when the message is empty."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
