"""DeepLabV3+ (Chen et al., ECCV 2018): dilated ResNet encoder, ASPP, low-level decoder.

Shapes for an input of H x W and output stride ``os`` (8 or 16; 32 means no dilation)::

    backbone.layer1 ........ [B, low_ch,  H/4,  W/4] --1x1 conv--> 48 ch ----------.
    backbone.layer4 ........ [B, high_ch, H/os, W/os] --ASPP--> 256 ch --up to H/4--> concat
    concat (304 ch) --3x3 conv 256--3x3 conv 256--1x1 classifier--> bilinear up to H x W

Training with a batch of 1 fails: the ASPP image-pooling branch normalises a 1x1 map, so
BatchNorm sees a single value per channel. The training loader drops the last incomplete
batch for this reason; evaluation (BatchNorm in eval mode) works with any batch size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .activations import make_activation, replace_relu
from .backbones import resnet_features
from .registry import register

ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48
DECODER_CHANNELS = 256
# Atrous rates at output stride 16, scaled by 16 / output_stride (paper: doubled at OS 8).
ASPP_RATES_OS16 = (6, 12, 18)
# As in the paper and torchvision's ASPP.
ASPP_DROPOUT = 0.5


def conv_bn_act(in_ch: int, out_ch: int, kernel_size: int, activation: str,
                dilation: int = 1, separable: bool = False) -> nn.Sequential:
    """Conv -> BatchNorm -> activation; a separable 3x3 is depthwise then pointwise (as in Xception)."""
    padding = dilation * (kernel_size // 2)
    if separable and kernel_size > 1:
        conv: nn.Module = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, kernel_size, padding=padding, dilation=dilation, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
        )
    else:
        conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), make_activation(activation))


class ImagePooling(nn.Module):
    """ASPP's global context branch: average-pool to 1x1, project, broadcast back."""

    def __init__(self, in_ch: int, out_ch: int, activation: str) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = conv_bn_act(in_ch, out_ch, 1, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.project(self.pool(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, image pooling; then 1x1 projection."""

    def __init__(self, in_ch: int, rates: tuple[int, ...], activation: str, separable: bool) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_act(in_ch, ASPP_CHANNELS, 1, activation)]
            + [conv_bn_act(in_ch, ASPP_CHANNELS, 3, activation, dilation=r, separable=separable) for r in rates]
            + [ImagePooling(in_ch, ASPP_CHANNELS, activation)]
        )
        self.project = nn.Sequential(
            conv_bn_act(len(self.branches) * ASPP_CHANNELS, ASPP_CHANNELS, 1, activation),
            nn.Dropout(ASPP_DROPOUT),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP over the deep features plus the decoder that fuses in the stride-4 features."""

    def __init__(self, low_ch: int, high_ch: int, num_classes: int, rates: tuple[int, ...],
                 activation: str, separable: bool) -> None:
        super().__init__()
        self.aspp = ASPP(high_ch, rates, activation, separable)
        self.low_level_proj = conv_bn_act(low_ch, LOW_LEVEL_CHANNELS, 1, activation)
        self.fuse = nn.Sequential(
            conv_bn_act(ASPP_CHANNELS + LOW_LEVEL_CHANNELS, DECODER_CHANNELS, 3, activation, separable=separable),
            conv_bn_act(DECODER_CHANNELS, DECODER_CHANNELS, 3, activation, separable=separable),
        )
        self.classifier = nn.Conv2d(DECODER_CHANNELS, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        fused = self.fuse(torch.cat([context, self.low_level_proj(low)], dim=1))
        return self.classifier(fused)


class DeepLabV3Plus(nn.Module):
    """Backbone + DeepLabV3+ head; ``forward(x)`` returns ``{"out": logits}`` at the input size."""

    def __init__(self, backbone: nn.Module, head: DeepLabV3PlusHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low, high = self.backbone(x)
        logits = self.head(low, high)
        return {"out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def _init_head(head: nn.Module) -> None:
    # Same scheme torchvision uses for its ResNets, so the randomly initialised head starts
    # on the same footing as the backbone.
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register("deeplabv3plus", "deeplabv3+", "deeplabv3_plus", default_backbone="resnet50")
def build_deeplabv3plus(cfg: ModelConfig, num_classes: int) -> DeepLabV3Plus:
    """DeepLabV3+ on a torchvision ResNet (``model.backbone``) at ``model.output_stride``."""
    backbone = replace_relu(resnet_features(cfg.backbone, cfg.output_stride), cfg.activation)
    rates = tuple(r * 16 // cfg.output_stride for r in ASPP_RATES_OS16)
    head = DeepLabV3PlusHead(backbone.low_channels, backbone.high_channels, num_classes, rates,
                             cfg.activation, cfg.separable)
    _init_head(head)
    return DeepLabV3Plus(backbone, head)
