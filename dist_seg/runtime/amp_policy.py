"""``backend.amp_dtype: auto``: the autocast dtype a device runs natively and faster than float32.

* CUDA / ROCm GPU with native bfloat16 (Ampere and later, MI200 and later): bfloat16, no
  GradScaler (bf16 has float32's exponent range);
* a GPU without it: float16 with a GradScaler;
* a CPU whose flags show native bf16 instructions (``avx512_bf16`` or ``amx_bf16``: Intel
  Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later): bfloat16;
* any other CPU (AVX2-only parts emulate bf16 and run it slower than float32): float32.
"""

from __future__ import annotations

from pathlib import Path

import torch

# /proc/cpuinfo flags meaning the CPU computes bf16 dot products in hardware.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags from /proc/cpuinfo; empty where there is no such file."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 instructions (see :data:`NATIVE_BF16_CPU_FLAGS`)."""
    return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)


def gpu_has_native_bf16() -> bool:
    """True when the current GPU runs bf16 in hardware (emulated support does not count)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_amp_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``device``: bfloat16 or float16 (pair it with a GradScaler), or None for float32.

    For a GPU, call it with that GPU as the current device (the trainer sets it first).
    """
    if device.type == "cuda":
        return torch.bfloat16 if gpu_has_native_bf16() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """float16 autocast needs loss scaling to keep small gradients from flushing to zero."""
    return dtype == torch.float16
