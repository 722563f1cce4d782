"""Activation functions selectable with ``model.activation``."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from ..errors import ConfigError

# In-place only where autograd is known to handle it (the backward needs only the output
# or a sign), which saves one activation-sized buffer per use.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "elu": lambda: nn.ELU(inplace=True),
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
}


def check_activation(name: str) -> None:
    """Raise :class:`ConfigError` naming the choices when ``name`` is not a known activation."""
    if name in ACTIVATIONS:
        return
    close = difflib.get_close_matches(name.lower(), list(ACTIVATIONS), n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"model.activation: unknown activation {name!r}; {hint}choose one of {', '.join(ACTIVATIONS)}")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (one of :data:`ACTIVATIONS`)."""
    check_activation(name)
    return ACTIVATIONS[name]()


def replace_relu(module: nn.Module, name: str) -> nn.Module:
    """Swap every ``nn.ReLU`` inside ``module`` for the activation ``name``, in place; returns ``module``.

    Pretrained torchvision networks hard-wire ReLU; swapping the modules (they hold no
    parameters) changes the non-linearity without touching the weights' layout.
    """
    check_activation(name)
    if name == "relu":
        return module
    for parent in list(module.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, make_activation(name))
    return module
