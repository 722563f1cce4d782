"""Segmentation models: a registry of built-in types plus custom models by import path.

``build_model(cfg, num_classes)`` returns a module whose ``forward(x)`` takes a float
``[B, 3, H, W]`` batch and returns ``{"out": logits [B, num_classes, H, W]}``.
``check_model_config`` finds every config error of the model section in well under a
second (no weights are allocated), so runs fail before any data is prepared.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError

# Imported for their @register side effect: each module adds its model types.
# smp_models imports segmentation_models_pytorch only when model.type smp is used (the zoo extra).
from . import deeplabv3plus, smp_models, torchvision_models  # noqa: F401
from .activations import ACTIVATIONS, check_activation
from .batchnorm import one_sample_mode
from .custom import build_custom_model, check_custom_model
from .registry import MODEL_TYPES, register, resolve, with_default_backbone
from .weights import fitting_backbone_weights, load_backbone_weights, read_state_dict

__all__ = ["ACTIVATIONS", "MODEL_TYPES", "build_model", "check_model_config", "describe_model", "register",
           "with_default_backbone"]


def describe_model(cfg: ModelConfig) -> str:
    """The model as messages name it: the type, and the backbone for built-in types
    (for smp the architecture and encoder)."""
    if cfg.is_custom:
        return cfg.type
    if cfg.type == smp_models.TYPE:
        return f"smp {cfg.arch or smp_models.DEFAULT_ARCH} with encoder {cfg.encoder or cfg.backbone}"
    return f"{cfg.type} with backbone {cfg.backbone}"


def _build_builtin(cfg: ModelConfig, num_classes: int) -> nn.Module:
    builder = resolve(cfg.type)
    check_activation(cfg.activation)  # before building: construction takes seconds
    return builder(cfg, num_classes)


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the network described by ``cfg`` for ``num_classes`` classes, with random weights
    or, when ``cfg.backbone_weights`` is set, with that local file loaded into its backbone.

    ``model.backbone: null`` builds the type's default backbone. Raises
    :class:`~dist_seg.errors.ConfigError` for an unknown type, backbone or activation, a
    custom model that cannot be imported or constructed, or a weights file that is
    missing, unreadable or does not fit.
    """
    cfg = with_default_backbone(cfg)
    if cfg.is_custom:
        model = build_custom_model(cfg.type, num_classes, cfg.extra)
    else:
        model = _build_builtin(cfg, num_classes)
    if cfg.backbone_weights is not None:
        load_backbone_weights(model, cfg.backbone_weights, describe_model(cfg))
    return model


def check_model_config(cfg: ModelConfig, num_classes: int, image_size: tuple[int, int] | None = None,
                       batch_size: int = 2) -> ModelConfig:
    """Raise :class:`ConfigError` for anything :func:`build_model` would reject; return ``cfg``
    with its backbone resolved.

    Built-in types are constructed on the meta device (shapes only, no memory, no init cost); a
    ``backbone_weights`` file is read and matched against the backbone's names and shapes; with ``image_size``
    a meta forward pass checks the logits are ``[1, num_classes, H, W]``; for a per-rank ``batch_size`` of 1
    that pass keeps BatchNorm on batch statistics, as training does, so a model that cannot train on one
    sample is refused; a type with input-size rules (smp: multiples of the encoder's output stride) refuses an
    ``image_size`` it cannot take, naming ``training.image_size``. Custom models are imported and their
    constructor's signature checked, but not constructed: user code may not run on the meta device.
    """
    cfg = with_default_backbone(cfg)
    if cfg.is_custom:
        check_custom_model(cfg.type, num_classes, cfg.extra)
        if cfg.backbone_weights is not None:
            read_state_dict(cfg.backbone_weights)  # readable here; matched to the backbone at build time
        return cfg
    with torch.device("meta"):
        model = _build_builtin(cfg, num_classes)
    if cfg.backbone_weights is not None:
        fitting_backbone_weights(model, cfg.backbone_weights, describe_model(cfg))
    if image_size is not None:
        check_image_size = getattr(model, "check_image_size", None)  # types with input-size rules (smp)
        if check_image_size is not None:
            check_image_size(tuple(image_size))
        with torch.no_grad(), one_sample_mode(model, batch_size, describe_model(cfg)):
            out = model(torch.empty(1, 3, *image_size, device="meta"))["out"]
        if tuple(out.shape) != (1, num_classes, *image_size):
            raise ConfigError(f"model.type: {describe_model(cfg)} returns logits of shape {list(out.shape)} for an "
                              f"input of {image_size[0]}x{image_size[1]} (HxW); expected "
                              f"[1, {num_classes}, {image_size[0]}, {image_size[1]}]")
    return cfg
