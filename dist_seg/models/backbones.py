"""Dilated torchvision ResNet feature extractors for the DeepLabV3+ encoder.

torchvision's ``replace_stride_with_dilation`` only works for Bottleneck blocks
(resnet50 and deeper); BasicBlock (resnet18/34) refuses dilation. So the stride is traded
for dilation here, after construction, the same way for both block types.
"""

from __future__ import annotations

import difflib

import torch
import torchvision
from torch import nn

from ..errors import ConfigError

RESNETS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)
OUTPUT_STRIDES = (8, 16, 32)


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without its classifier, returning (stride-4 features, last-stage features).

    Submodule names equal torchvision's, so a classification state dict (minus ``fc.*``)
    loads directly.
    """

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        # Every torchvision ResNet ends in 512 * expansion channels and starts layer1 at 64 * expansion.
        self.high_channels = resnet.fc.in_features
        self.low_channels = self.high_channels // 8

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return low, high


def _dilate_stage(stage: nn.Sequential, first_dilation: int, dilation: int) -> None:
    """Make ``stage`` keep its input resolution: stride 1 everywhere, 3x3 convs dilated.

    As in torchvision's own dilated ResNets, the stage's first block keeps the dilation of
    the stage before it and the following blocks use the new one.
    """
    for index, block in enumerate(stage):
        d = first_dilation if index == 0 else dilation
        for conv in block.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                conv.dilation = (d, d)
                conv.padding = (d, d)


def resnet_features(name: str, output_stride: int) -> ResNetFeatures:
    """A randomly initialised ResNet ``name`` whose last stage has stride ``output_stride``."""
    if name not in RESNETS:
        close = difflib.get_close_matches(name.lower(), RESNETS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"model.backbone: {name!r} is not a backbone of deeplabv3plus; {hint}choose one of {', '.join(RESNETS)}"
        )
    if output_stride not in OUTPUT_STRIDES:
        raise ConfigError(f"model.output_stride: must be one of {OUTPUT_STRIDES}, got {output_stride}")
    resnet = getattr(torchvision.models, name)(weights=None)
    # Undilated, layer3 ends at stride 16 and layer4 at 32; each stage kept at its input
    # resolution doubles the dilation so the receptive field still grows as designed.
    if output_stride == 16:
        _dilate_stage(resnet.layer4, 1, 2)
    elif output_stride == 8:
        _dilate_stage(resnet.layer3, 1, 2)
        _dilate_stage(resnet.layer4, 2, 4)
    return ResNetFeatures(resnet)
