"""A fake ``pynvml`` module that behaves like nvidia-ml-py against a scripted set of GPUs.

Modelled on the real package: ``NVMLError(code)`` turns into the matching
``NVMLError_<Name>`` subclass with ``.value``; calls before ``nvmlInit`` raise
Uninitialized; process lists come as objects with ``pid`` / ``usedGpuMemory`` (None for
"value not available", as pynvml converts it, or the raw all-ones value of older
releases); a process call newer than the "driver" raises FunctionNotFound, and one newer
than the "pynvml release" does not exist as an attribute at all.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

# code, pynvml constant suffix, pynvml exception class suffix
_ERRORS = (
    (1, "UNINITIALIZED", "Uninitialized"),
    (2, "INVALID_ARGUMENT", "InvalidArgument"),
    (3, "NOT_SUPPORTED", "NotSupported"),
    (4, "NO_PERMISSION", "NoPermission"),
    (6, "NOT_FOUND", "NotFound"),
    (12, "LIBRARY_NOT_FOUND", "LibraryNotFound"),
    (13, "FUNCTION_NOT_FOUND", "FunctionNotFound"),
    (15, "GPU_IS_LOST", "GpuIsLost"),
    (999, "UNKNOWN", "Unknown"),
)
NVML_ERROR_UNINITIALIZED, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_SUPPORTED = 1, 2, 3
NVML_ERROR_NO_PERMISSION, NVML_ERROR_NOT_FOUND, NVML_ERROR_LIBRARY_NOT_FOUND = 4, 6, 12
NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_GPU_IS_LOST = 13, 15
VALUE_NOT_AVAILABLE = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE_ulonglong
MiB = 1024 * 1024


@dataclass
class FakeNvmlGpu:
    """One scripted GPU (or MIG instance). ``processes``: (pid, used MiB or None)."""

    uuid: str
    bus_id: str
    total_mb: int = 81_559
    used_mb: int = 2_000
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    mig: list[FakeNvmlGpu] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)  # function name -> NVML error code


class _Handle:
    def __init__(self, gpu: FakeNvmlGpu, parent: _Handle | None = None) -> None:
        self.gpu = gpu
        self.parent = parent


def make_pynvml(
    gpus: list[FakeNvmlGpu],
    *,
    pynvml_api: int = 3,
    driver_api: int = 3,
    init_error: int | None = None,
    raw_not_available: bool = False,
) -> types.ModuleType:
    """A module object to put in ``sys.modules['pynvml']``.

    ``pynvml_api``: newest ``nvmlDeviceGetComputeRunningProcesses_v<N>`` wrapper the
    "package" has; ``driver_api``: newest the "driver" implements. ``calls`` records
    every call by name.
    """
    mod = types.ModuleType("pynvml")
    mod.calls = []
    mod.init_count = 0
    for code, const, _ in _ERRORS:
        setattr(mod, f"NVML_ERROR_{const}", code)
    messages = {code: name for code, _, name in _ERRORS}

    class NVMLError(Exception):
        _valClassMapping: dict[int, type] = {}

        def __new__(cls, value):
            if cls is NVMLError:
                cls = NVMLError._valClassMapping.get(value, cls)
            obj = Exception.__new__(cls)
            obj.value = value
            return obj

        def __init__(self, value):
            super().__init__(value)

        def __str__(self):
            return messages.get(self.value, f"Unknown Error {self.value}")

    mod.NVMLError = NVMLError
    for code, _, name in _ERRORS:
        sub = type(f"NVMLError_{name}", (NVMLError,), {})
        NVMLError._valClassMapping[code] = sub
        setattr(mod, sub.__name__, sub)

    def api(name):
        def decorate(fn):
            def wrapper(*args):
                mod.calls.append(name)
                if name not in ("nvmlInit", "nvmlShutdown") and mod.init_count == 0:
                    raise NVMLError(NVML_ERROR_UNINITIALIZED)
                handle = args[0] if args and isinstance(args[0], _Handle) else None
                if handle is not None and name in handle.gpu.fail:
                    raise NVMLError(handle.gpu.fail[name])
                return fn(*args)

            wrapper.__name__ = name
            setattr(mod, name, wrapper)
            return wrapper

        return decorate

    top = [_Handle(g) for g in gpus]

    def all_handles():
        for h in top:
            yield h
            for m in h.gpu.mig:
                yield _Handle(m, parent=h)

    @api("nvmlInit")
    def _init():
        if init_error is not None:
            raise NVMLError(init_error)
        mod.init_count += 1

    @api("nvmlShutdown")
    def _shutdown():
        if mod.init_count == 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        mod.init_count -= 1

    @api("nvmlDeviceGetCount")
    def _count():
        return len(top)

    @api("nvmlDeviceGetHandleByIndex")
    def _by_index(index):
        if not 0 <= index < len(top):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return top[index]

    @api("nvmlDeviceGetHandleByUUID")
    def _by_uuid(uuid):
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for h in all_handles():
            if h.gpu.uuid == uuid:
                return h
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    @api("nvmlDeviceGetHandleByPciBusId")
    def _by_bus(bus_id):
        bus_id = bus_id.decode() if isinstance(bus_id, bytes) else bus_id
        for h in top:
            if _parse_bus(h.gpu.bus_id) == _parse_bus(bus_id):
                return h
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    @api("nvmlDeviceGetIndex")
    def _index(handle):
        if handle.parent is not None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return top.index(handle)

    @api("nvmlDeviceIsMigDeviceHandle")
    def _is_mig(handle):
        return handle.parent is not None

    @api("nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
    def _parent(handle):
        if handle.parent is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return handle.parent

    @api("nvmlDeviceGetMigMode")
    def _mig_mode(handle):
        if not handle.gpu.mig:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return [1, 1]

    @api("nvmlDeviceGetMaxMigDeviceCount")
    def _mig_count(handle):
        return 7

    @api("nvmlDeviceGetMigDeviceHandleByIndex")
    def _mig_handle(handle, index):
        if index >= len(handle.gpu.mig):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return _Handle(handle.gpu.mig[index], parent=handle)

    @api("nvmlDeviceGetUUID")
    def _uuid(handle):
        return handle.gpu.uuid

    @api("nvmlDeviceGetPciInfo")
    def _pci(handle):
        return types.SimpleNamespace(busId=handle.gpu.bus_id)

    @api("nvmlDeviceGetMemoryInfo")
    def _memory(handle):
        total, used = handle.gpu.total_mb * MiB, handle.gpu.used_mb * MiB
        return types.SimpleNamespace(total=total, used=used, free=total - used)

    def processes(handle):
        unknown = VALUE_NOT_AVAILABLE if raw_not_available else None
        return [
            types.SimpleNamespace(pid=pid, usedGpuMemory=unknown if mb is None else mb * MiB,
                                  gpuInstanceId=VALUE_NOT_AVAILABLE, computeInstanceId=VALUE_NOT_AVAILABLE)
            for pid, mb in handle.gpu.processes
        ]

    def process_call(name, version):
        @api(name)
        def call(handle):
            if version > driver_api:
                raise NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)
            return processes(handle)

    for version in range(2, pynvml_api + 1):
        process_call(f"nvmlDeviceGetComputeRunningProcesses_v{version}", version)
    # Unsuffixed: the newest wrapper in new releases, the original v1 symbol in old ones.
    process_call("nvmlDeviceGetComputeRunningProcesses", pynvml_api)
    return mod


def _parse_bus(text: str) -> tuple[int, ...]:
    head, function = text.split(".")
    parts = [int(p, 16) for p in head.split(":")]
    if len(parts) == 2:
        parts.insert(0, 0)
    return (*parts, int(function, 16))
