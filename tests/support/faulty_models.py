"""Custom models that fail the way user models do, for tests/integration/test_model_checks.py (by import path)."""

from __future__ import annotations

import torch
from fixtures_custom_model import TinyNet
from torch import nn

# The CPU allocator's words, as torch raises them when the host has no memory left.
CPU_OOM = "[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"


def _computes(x: torch.Tensor) -> bool:
    """Not the meta-device pass that counts FLOPs for the start-up summary."""
    return x.device.type != "meta"


class PooledBatchNorm(TinyNet):
    """TinyNet plus an image-pooling branch with BatchNorm (as ASPP has): cannot train on one sample."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, num_classes, 1))

    def forward(self, x: torch.Tensor):
        return super().forward(x) + self.pool(x)


class SpatialBatchNorm(TinyNet):
    """TinyNet with BatchNorm over full feature maps only: one sample still gives it many values."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.backbone = nn.Sequential(nn.Conv2d(3, self.width, 3, padding=1), nn.BatchNorm2d(self.width), nn.ReLU())


class ForwardRaises(TinyNet):
    """A forward with a bug: raises ``error`` (ValueError, AssertionError or TypeError) on every call."""

    def __init__(self, num_classes: int, error: str = "ValueError") -> None:
        super().__init__(num_classes)
        self.error = {"ValueError": ValueError, "AssertionError": AssertionError, "TypeError": TypeError}[error]

    def forward(self, x: torch.Tensor):
        if _computes(x):
            raise self.error("features and skip connection differ in size")
        return super().forward(x)


class OutOfMemoryInTraining(TinyNet):
    """Runs out of host memory in every training forward (as a batch too large for the machine does)."""

    def forward(self, x: torch.Tensor):
        if self.training and _computes(x):
            raise RuntimeError(CPU_OOM)
        return super().forward(x)


class OutOfMemoryInValidation(TinyNet):
    """Runs out of device memory on evaluation batches of more than one sample (the pre-flight pass has one)."""

    def forward(self, x: torch.Tensor):
        if not self.training and _computes(x) and x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(x)


class Frozen(TinyNet):
    """Every parameter frozen (a backbone-freezing constructor that forgot to unfreeze the head)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.requires_grad_(False)
