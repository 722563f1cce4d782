"""Backbone weights from a local file (``model.backbone_weights``); nothing is ever downloaded.

Accepted files, all read with ``torch.load(weights_only=True)``:

* a torchvision classification state dict (e.g. ``resnet50-11ad3fa6.pth``, the ImageNet
  weights); its classifier (``fc.*`` / ``classifier.*``) is ignored, and a single wrapping
  attribute such as MobileNet's ``features.`` is stripped;
* a segmentation state dict or a dist_seg checkpoint (``{"model": state_dict, ...}``): only
  the ``backbone.*`` entries are used.

The entries must fit the model's ``backbone`` submodule exactly (names and shapes), so a
file for the wrong architecture is an error instead of a silently half-initialised network.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, DistSegError

_HEAD_PREFIXES = ("fc.", "classifier.")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # added by DDP and torch.compile
_SHOWN = 5  # mismatching keys quoted in an error


def read_state_dict(path: Path, key: str = "model.backbone_weights",
                    error: type[DistSegError] = ConfigError) -> dict[str, torch.Tensor]:
    """The tensors in the weights file ``path`` (a plain state dict, or one under ``"model"`` /
    ``"state_dict"`` as dist_seg and many trainers save it); failures raise ``error`` naming ``key``."""
    if not path.is_file():
        raise error(f"{key}: file {path} does not exist; give the path of a local dist_seg checkpoint or "
                    "torch state dict (.pth), or remove the key to start from random weights")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails with many types (zip, pickle, EOF, KeyError)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise error(f"{key}: cannot read {path} as a torch weights file "
                    f"({type(exc).__name__}: {first_line}); the file may be truncated or not a "
                    "torch.save() state dict") from exc
    for container_key in ("model", "state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(container_key), Mapping):
            data = data[container_key]
    if not isinstance(data, Mapping) or not data or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise error(f"{key}: {path} does not hold a state dict (a mapping of "
                    "parameter names to tensors); save one with torch.save(model.state_dict(), path)")
    return dict(data)


def unwrap_key(key: str) -> str:
    """A state-dict key without the prefixes DDP (``module.``) and torch.compile (``_orig_mod.``) add."""
    while key.startswith(_WRAPPER_PREFIXES):  # nested: DDP around a compiled model gives both
        key = key.split(".", 1)[1]
    return key


def backbone_entries(state: dict[str, torch.Tensor], backbone_keys: set[str]) -> dict[str, torch.Tensor]:
    """The part of ``state`` meant for the backbone, renamed to the backbone's own keys."""
    state = {unwrap_key(k): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    # A classifier whose feature extractor sits under one attribute (MobileNet's features.N)
    # while the segmentation backbone is that extractor itself.
    roots = {k.split(".", 1)[0] for k in state}
    if len(roots) == 1:
        wrapper = f"{roots.pop()}."
        if not any(k.startswith(wrapper) for k in backbone_keys):
            return {k[len(wrapper):]: v for k, v in state.items()}
    return state


def fitting_backbone_weights(model: nn.Module, path: Path, model_name: str) -> dict[str, torch.Tensor]:
    """The entries of ``path`` for ``model.backbone``, checked against its names and shapes.

    Works on a model built on the meta device too (only names and shapes are compared).
    ``model_name`` describes the model in error messages (e.g. ``"deeplabv3plus / resnet50"``).
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ConfigError(f"model.backbone_weights: model {model_name} has no 'backbone' submodule to load "
                          "weights into; remove the key, or load the weights in your model's constructor "
                          "(pass the path as an extra model key)")
    expected = backbone.state_dict()
    state = backbone_entries(read_state_dict(path), set(expected))
    adapt = getattr(model, "adapt_backbone_state", None)  # a type's own renaming (smp's timm encoders)
    if adapt is not None:
        state = adapt(state, set(expected))
    # Files from before BatchNorm counted its batches lack num_batches_tracked; it is not a weight.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} (file {list(state[k].shape)}, model {list(expected[k].shape)})"
                   for k in state if k in expected and state[k].shape != expected[k].shape]
    problems = [f"{len(keys)} {what}: {', '.join(keys[:_SHOWN])}{', ...' if len(keys) > _SHOWN else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", wrong_shape))
                if keys]
    if problems:
        raise ConfigError(f"model.backbone_weights: {path} does not fit the backbone of {model_name}: "
                          f"{'; '.join(problems)}. Use a state dict saved from the same architecture "
                          "(e.g. torchvision's ImageNet file for model.backbone)")
    return state


def load_backbone_weights(model: nn.Module, path: Path, model_name: str) -> None:
    """Load the backbone weights in ``path`` into ``model.backbone``, checking names and shapes."""
    state = fitting_backbone_weights(model, path, model_name)
    model.backbone.load_state_dict(state, strict=False)
