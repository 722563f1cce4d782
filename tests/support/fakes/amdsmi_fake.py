"""A fake ``amdsmi`` module in either process-API generation, and a broken one.

* ``api="new"`` (ROCm >= 6.1): ``amdsmi_get_gpu_process_list`` returns one dict per
  process (``pid``, ``name``, ``mem``, ``memory_usage.vram_mem`` in bytes, "N/A" where
  unknown) and ``amdsmi_get_gpu_process_info`` is gone.
* ``api="old"`` (ROCm 5.7-6.0): it returns opaque process handles; details come from
  ``amdsmi_get_gpu_process_info(processor, process)``.

``amdsmi_get_gpu_vram_usage`` reports MB, as the real library does.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


@dataclass
class FakeAmdGpu:
    """One scripted GPU. ``processes``: (pid, VRAM MiB or None for "N/A")."""

    uuid: str
    bdf: str
    vram_total_mb: int = 196_592
    vram_used_mb: int = 3_000
    processes: list[tuple[int, int | None]] = field(default_factory=list)


class _ProcessorHandle:
    def __init__(self, gpu: FakeAmdGpu) -> None:
        self.gpu = gpu


class _ProcessHandle:
    def __init__(self, pid: int) -> None:
        self.value = pid


def make_amdsmi(gpus: list[FakeAmdGpu], *, api: str = "new", init_error: bool = False) -> types.ModuleType:
    """A module object to put in ``sys.modules['amdsmi']``; ``calls`` records calls by name."""
    mod = types.ModuleType("amdsmi")
    mod.calls = []

    class AmdSmiException(Exception):
        pass

    class AmdSmiLibraryException(AmdSmiException):
        def __init__(self, err_code: int) -> None:
            super().__init__(f"Error code:\n\t{err_code} | AMDSMI_STATUS_INIT_ERROR")
            self.err_code = err_code

    mod.AmdSmiException = AmdSmiException
    mod.AmdSmiLibraryException = AmdSmiLibraryException
    handles = [_ProcessorHandle(g) for g in gpus]

    def api_fn(fn):
        def wrapper(*args):
            mod.calls.append(fn.__name__)
            return fn(*args)

        setattr(mod, fn.__name__, wrapper)
        return wrapper

    def info(pid: int, mb: int | None) -> dict:
        vram = "N/A" if mb is None else mb * MiB
        return {
            "name": f"proc{pid}",
            "pid": pid,
            "mem": vram,
            "engine_usage": {"gfx": 0, "enc": 0},
            "memory_usage": {"gtt_mem": 0, "cpu_mem": 0, "vram_mem": vram},
            "cu_occupancy": "N/A",
        }

    @api_fn
    def amdsmi_init(*flags):
        if init_error:
            raise AmdSmiLibraryException(8)

    @api_fn
    def amdsmi_shut_down():
        pass

    @api_fn
    def amdsmi_get_processor_handles():
        return list(handles)

    @api_fn
    def amdsmi_get_gpu_device_uuid(handle):
        return handle.gpu.uuid

    @api_fn
    def amdsmi_get_gpu_device_bdf(handle):
        return handle.gpu.bdf

    @api_fn
    def amdsmi_get_gpu_vram_usage(handle):
        return {"vram_total": handle.gpu.vram_total_mb, "vram_used": handle.gpu.vram_used_mb}

    if api == "new":
        @api_fn
        def amdsmi_get_gpu_process_list(handle):
            return [info(pid, mb) for pid, mb in handle.gpu.processes]
    else:
        @api_fn
        def amdsmi_get_gpu_process_list(handle):
            return [_ProcessHandle(pid) for pid, _ in handle.gpu.processes]

        @api_fn
        def amdsmi_get_gpu_process_info(handle, process):
            if not isinstance(process, _ProcessHandle):
                raise AmdSmiException(f"expected a process handle, got {process!r}")
            for pid, mb in handle.gpu.processes:
                if pid == process.value:
                    return info(pid, mb)
            raise AmdSmiLibraryException(31)  # AMDSMI_STATUS_NOT_FOUND: the process exited

    return mod


def write_broken_amdsmi(directory: Path, raise_statement: str) -> Path:
    """An ``amdsmi`` package in ``directory`` whose import runs ``raise_statement``.

    The real package loads ``libamd_smi.so`` and reads ROCm paths while importing, so a
    broken ROCm install fails at import with OSError, KeyError and the like.
    """
    package = directory / "amdsmi"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(raise_statement + "\n")
    return directory
