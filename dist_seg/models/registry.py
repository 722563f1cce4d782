"""Model registry: ``model.type`` name -> builder function.

Adding a model is one decorated function::

    @register("mynet", "my_net", default_backbone="resnet50")
    def build_mynet(cfg: ModelConfig, num_classes: int) -> nn.Module: ...

Builders receive the whole :class:`~dist_seg.config.ModelConfig`, with ``backbone`` already
resolved (``model.backbone: null`` means the type's ``default_backbone``), and return a
module whose ``forward(x)`` gives ``{"out": logits}`` at the input resolution.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from types import MappingProxyType

from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError

Builder = Callable[[ModelConfig, int], nn.Module]
Completer = Callable[[ModelConfig], ModelConfig]

_BUILDERS: dict[str, Builder] = {}
# Every accepted spelling (canonical names and aliases) -> canonical name.
_NAMES: dict[str, str] = {}
# Canonical name -> the backbone used when model.backbone is null.
_DEFAULT_BACKBONES: dict[str, str] = {}
# Canonical name -> a function filling in (and checking) the type's own keys, when it has one.
_COMPLETERS: dict[str, Completer] = {}

# Read-only view of every accepted ``model.type`` name (aliases included) -> builder.
MODEL_TYPES = MappingProxyType(_BUILDERS)


def register(name: str, *aliases: str, default_backbone: str,
             complete: Completer | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` under ``name`` and its ``aliases``, with the backbone
    it gets when the config names none; ``complete``, if given, resolves the config instead
    (a type with keys of its own, such as smp's ``arch`` / ``encoder``)."""

    def decorate(builder: Builder) -> Builder:
        _DEFAULT_BACKBONES[name] = default_backbone
        if complete is not None:
            _COMPLETERS[name] = complete
        for spelling in (name, *aliases):
            if spelling in _BUILDERS:
                raise ValueError(f"model type {spelling!r} is registered twice")  # a bug, not user input
            _BUILDERS[spelling] = builder
            _NAMES[spelling] = name
        return builder

    return decorate


def available_types() -> str:
    """Human-readable list of model types, aliases in parentheses."""
    canonical = sorted(set(_NAMES.values()))
    parts = []
    for name in canonical:
        aliases = [s for s, c in _NAMES.items() if c == name and s != name]
        parts.append(f"{name} ({', '.join(aliases)})" if aliases else name)
    return ", ".join(parts)


def resolve(model_type: str) -> Builder:
    """The builder for ``model_type``; unknown names raise :class:`ConfigError` with a suggestion."""
    builder = _BUILDERS.get(model_type)
    if builder is not None:
        return builder
    close = difflib.get_close_matches(model_type.lower(), list(_BUILDERS), n=1, cutoff=0.5)
    hint = f"did you mean {_NAMES[close[0]]!r}? " if close else ""
    raise ConfigError(
        f"model.type: unknown model type {model_type!r}; {hint}choose one of {available_types()}, "
        "or give a custom model as an import path 'package.module:ClassName'"
    )


def with_default_backbone(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with ``backbone`` filled in from its type when null (custom models keep theirs),
    or as the type's ``complete`` function resolves it."""
    if cfg.is_custom:
        return cfg
    resolve(cfg.type)
    complete = _COMPLETERS.get(_NAMES[cfg.type])
    if complete is not None:
        return complete(cfg)
    if cfg.backbone is not None:
        return cfg
    return dataclasses.replace(cfg, backbone=_DEFAULT_BACKBONES[_NAMES[cfg.type]])
