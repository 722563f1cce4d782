"""Custom models that misbehave on purpose, for the pre-flight and storage tests (imported by import path)."""

from __future__ import annotations

import torch
from fixtures_custom_model import TinyNet
from torch import nn


class WrongClassCount(TinyNet):
    """Returns one channel too many: the class count of the config does not reach the head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes + 1)


class HalfSize(TinyNet):
    """Returns logits at half the input's resolution (forgot to upsample)."""

    def forward(self, x: torch.Tensor):
        return super().forward(x)[:, :, ::2, ::2]


class RaisesInInit(nn.Module):
    """A constructor that fails the way user code does."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        raise KeyError("pretrained_path")


class BigState(TinyNet):
    """TinyNet with a large non-trainable buffer, so each checkpoint takes long enough to write to be killed mid-way."""

    def __init__(self, num_classes: int, megabytes: int = 48) -> None:
        super().__init__(num_classes)
        self.register_buffer("ballast", torch.zeros(megabytes * 2**18))
