"""Precision, memory layout and compilation choices resolved for one device.

Resolving them once, with one log line per decision, keeps the training loop free of
device special cases.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import BackendConfig
from .amp_policy import resolve_amp_dtype


@dataclass
class Runtime:
    """How the model runs on ``device``."""

    device: torch.device
    amp: bool
    amp_dtype: torch.dtype
    use_grad_scaler: bool
    channels_last: bool
    compile: bool
    compile_mode: str

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for forward passes (a no-op when AMP is off)."""
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for float16 autocast (bf16 has fp32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.use_grad_scaler)


def enable_tf32() -> None:
    """TF32 for float32 matmuls and convolutions: the standard speed/accuracy trade on Ampere and later.

    Through ``fp32_precision`` where this torch has it (2.9+, where the ``allow_tf32`` flags are
    deprecated and mixing the two APIs is an error), else through the legacy flags.
    """
    matmul, cudnn_conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and hasattr(cudnn_conv, "fp32_precision"):
        matmul.fp32_precision = "tf32"
        cudnn_conv.fp32_precision = "tf32"
    else:
        matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def tf32_enabled() -> bool:
    """Whether float32 matmuls run as TF32 (whichever API set it)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision == "tf32"
    return bool(matmul.allow_tf32)


def without_compile_for_sync_bn(runtime: Runtime, syncs_batch_norm: bool,
                                log: Callable[[str], None] = print) -> Runtime:
    """``runtime`` with compile off when BatchNorm becomes SyncBatchNorm, saying why in ``log``.

    Dynamo does not trace ``nn.SyncBatchNorm``: every layer is a graph break
    (pytorch/pytorch#161302, #156680), so a ResNet compiles into dozens of graphs, and each
    layer's backward reads a mask on the host anyway (``count_all[mask]``, #78549). Eager mode
    is the faster and the predictable choice there.
    """
    if not (runtime.compile and syncs_batch_norm):
        return runtime
    log("compile off: backend.sync_bn makes every BatchNorm a SyncBatchNorm, which torch.compile cannot trace "
        "(a graph break per layer, pytorch/pytorch#161302); running eager. Turn backend.sync_bn off to compile")
    return dataclasses.replace(runtime, compile=False)


def resolve_runtime(cfg: BackendConfig, device: torch.device, log: Callable[[str], None] = print) -> Runtime:
    """Turn ``backend.*`` settings into concrete choices for ``device`` and log each one that overrides the config.

    The choices themselves are in the training run's start-up summary (:mod:`.summary`).
    """
    notes: list[str] = []
    on_gpu = device.type == "cuda"
    amp = cfg.amp
    if cfg.amp_dtype == "auto":
        # Call after torch.cuda.set_device: it asks the current GPU.
        resolved = resolve_amp_dtype(device)
        if amp and resolved is None:
            amp = False
            notes.append(f"AMP off: backend.amp_dtype auto chose float32 on {device.type} (no native bfloat16 "
                         "here; emulated bfloat16 is slower than float32); set bfloat16 to force it")
        dtype = resolved or torch.float16
    else:
        dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
    if amp and not on_gpu and dtype == torch.float16:
        amp = False
        notes.append("AMP off: float16 autocast needs a GPU; set backend.amp_dtype: bfloat16 for CPU autocast")
    if amp and on_gpu and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
        notes.append("AMP: this GPU has no bfloat16 support, using float16 with a GradScaler")
    channels_last = on_gpu if cfg.channels_last == "auto" else bool(cfg.channels_last)
    compile_ = on_gpu if cfg.compile == "auto" else bool(cfg.compile)
    if on_gpu and cfg.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if on_gpu:
        enable_tf32()
    runtime = Runtime(
        device=device,
        amp=amp,
        amp_dtype=dtype,
        use_grad_scaler=amp and dtype == torch.float16,
        channels_last=channels_last,
        compile=compile_,
        compile_mode=cfg.compile_mode,
    )
    for note in notes:
        log(note)
    return runtime
