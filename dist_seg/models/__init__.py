"""Segmentation models: a registry of built-in types plus custom models by import path.

``build_model(cfg, num_classes)`` returns a module whose ``forward(x)`` takes a float
``[B, 3, H, W]`` batch and returns ``{"out": logits [B, num_classes, H, W]}``.
"""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
# Imported for their @register side effect: each module adds its model types.
from . import deeplabv3plus, torchvision_models  # noqa: F401
from .activations import ACTIVATIONS, check_activation
from .custom import build_custom_model
from .registry import MODEL_TYPES, register, resolve
from .weights import load_backbone_weights

__all__ = ["ACTIVATIONS", "MODEL_TYPES", "build_model", "register"]


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the network described by ``cfg`` for ``num_classes`` classes, with random weights
    or, when ``cfg.backbone_weights`` is set, with that local file loaded into its backbone.

    Raises :class:`~dist_seg.errors.ConfigError` for an unknown type, backbone or activation,
    a custom model that cannot be imported or constructed, or a weights file that is
    missing, unreadable or does not fit.
    """
    if cfg.is_custom:
        model = build_custom_model(cfg.type, num_classes, cfg.extra)
        name = cfg.type
    else:
        builder = resolve(cfg.type)
        check_activation(cfg.activation)  # before building: construction takes seconds
        model = builder(cfg, num_classes)
        name = f"{cfg.type} with backbone {cfg.backbone}"
    if cfg.backbone_weights is not None:
        load_backbone_weights(model, cfg.backbone_weights, name)
    return model
