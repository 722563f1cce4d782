"""torchvision's own segmentation models: DeepLabV3, FCN and LR-ASPP.

They are built with ``weights=None, weights_backbone=None`` (nothing is ever downloaded;
use ``model.backbone_weights`` for a local file) and without the auxiliary head. Their
output stride is fixed by torchvision (8 for the ResNet models, 16 for MobileNetV3), so
``model.output_stride`` applies to deeplabv3plus only. ``model.activation`` swaps every ReLU.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision.models.segmentation as tvseg
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .activations import replace_relu
from .registry import register

# model.type -> {model.backbone -> torchvision builder}
_BUILDERS: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "deeplabv3": {
        "resnet50": tvseg.deeplabv3_resnet50,
        "resnet101": tvseg.deeplabv3_resnet101,
        "mobilenet_v3_large": tvseg.deeplabv3_mobilenet_v3_large,
    },
    "fcn": {"resnet50": tvseg.fcn_resnet50, "resnet101": tvseg.fcn_resnet101},
    "lraspp": {"mobilenet_v3_large": tvseg.lraspp_mobilenet_v3_large},
}


def _build(model_type: str, cfg: ModelConfig, num_classes: int) -> nn.Module:
    choices = _BUILDERS[model_type]
    if cfg.backbone not in choices:
        raise ConfigError(
            f"model.backbone: {model_type} supports the backbones {', '.join(choices)}, got {cfg.backbone!r}; "
            f"set model.backbone to one of them (other ResNets work with model.type: deeplabv3plus)"
        )
    if cfg.separable:
        raise ConfigError(f"model.separable: only deeplabv3plus has separable convolutions; "
                          f"remove it or set it to false for model.type {model_type}")
    model = choices[cfg.backbone](weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    return replace_relu(model, cfg.activation)


@register("deeplabv3", default_backbone="resnet50")
def build_deeplabv3(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision DeepLabV3 (ResNet-50/101 or MobileNetV3-Large backbone)."""
    return _build("deeplabv3", cfg, num_classes)


@register("fcn", default_backbone="resnet50")
def build_fcn(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision FCN (ResNet-50/101 backbone)."""
    return _build("fcn", cfg, num_classes)


@register("lraspp", default_backbone="mobilenet_v3_large")
def build_lraspp(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """torchvision LR-ASPP (MobileNetV3-Large backbone)."""
    return _build("lraspp", cfg, num_classes)
