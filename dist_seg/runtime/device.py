"""Precision, memory layout and compilation choices resolved for one device.

Resolving them once, with one log line per decision, keeps the training loop free of
device special cases.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import BackendConfig
from ..errors import ConfigError
from .amp_policy import resolve_amp_dtype

#: What ``--precision`` accepts for predict / evaluate, and the autocast dtype each means (None: float32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: what the forward passes compute in."""
        if not self.amp:
            return "fp32"
        return "bf16" if self.amp_dtype == torch.bfloat16 else "fp16"

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


def inference_runtime(device: torch.device, precision: str | None = None) -> Runtime:
    """How predict, evaluate, export's parity reference, the final evaluation and the visualisations run a model.

    ``precision`` None is the default rule: float32 on a CPU (what an exported model computes, so
    predictions of a checkpoint and of its export agree), and on a GPU the autocast dtype
    ``backend.amp_dtype: auto`` picks for training (bf16, or fp16 on GPUs without bf16). ``fp32``,
    ``bf16`` or ``fp16`` ask for one; a choice the device cannot run is a ConfigError naming ``--precision``.
    No compilation: inference runs once per frame and would not repay it.
    """
    on_gpu = device.type == "cuda"
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and not on_gpu:
        raise ConfigError("--precision fp16 needs a GPU (CPU autocast computes bf16 only): use fp32 or bf16")
    if precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this GPU has no bfloat16 support: use fp16 or fp32")
    if precision is None:
        amp, amp_dtype = on_gpu, "auto"
    else:
        amp = PRECISIONS[precision] is not None
        amp_dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "auto")
    return resolve_runtime(BackendConfig(target=device.type, amp=amp, amp_dtype=amp_dtype, compile=False),
                           device, log=lambda _m: None)


def describe_precision(runtime: Runtime, requested: str | None) -> str:
    """``precision fp32 (the CPU default; --precision bf16 autocasts)``: the console line's wording."""
    if requested is not None:
        return f"precision {runtime.precision} (--precision {requested})"
    if runtime.device.type == "cpu":
        return f"precision {runtime.precision} (the CPU default; --precision bf16 runs bfloat16 autocast)"
    return f"precision {runtime.precision} (the GPU default, autocast; --precision fp32 for full precision)"
