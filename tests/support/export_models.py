"""Small custom models (``model.type: export_models:Class``) for the export tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinySegNet(nn.Module):
    """Conv encoder at stride 2 with a global-context branch, upsampled to the input size: exports quickly."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.context = nn.Conv2d(8, 8, 1)
        self.classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        features = features + self.context(F.adaptive_avg_pool2d(features, 1))
        return F.interpolate(self.classifier(features), size=x.shape[-2:], mode="bilinear", align_corners=False)


class SpectralSegNet(TinySegNet):
    """Scales its logits by the largest singular value of the features: an SVD, which ONNX has no operator for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        strength = torch.linalg.svdvals(logits.flatten(2))[..., :1]
        return logits * strength[:, :, None, None]
