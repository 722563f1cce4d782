"""Custom models named by import path: ``model.type: "my_pkg.my_module:MyNet"``.

The class (or any callable returning an ``nn.Module``) is constructed as
``MyNet(num_classes=num_classes, **extra)`` where ``extra`` holds the model section's keys
that are not built-in model keys. A model returning a plain logits tensor gets it wrapped
as ``{"out": tensor}``, the format the trainer and predictor expect.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, describe_raised


def import_factory(import_path: str) -> Any:
    """The object named by ``"package.module:Attribute"``; failures raise :class:`ConfigError`."""
    module_name, _, attr_path = import_path.partition(":")
    if not module_name or not attr_path:
        raise ConfigError(f"model.type: {import_path!r} is not an import path; write it as 'package.module:ClassName'")
    if module_name.startswith("."):
        raise ConfigError(f"model.type: {import_path!r} names a relative module; write the absolute module path "
                          "('package.module:ClassName') and run from the directory that contains the package "
                          "(or add it to PYTHONPATH)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"model.type: cannot import module {module_name!r} for {import_path!r} ({exc}); "
                          "install the package or run from the directory that contains it (or add it to "
                          "PYTHONPATH)") from exc
    except Exception as exc:  # noqa: BLE001 - the module's own code ran and may raise anything
        raise ConfigError(f"model.type: importing module {module_name!r} for {import_path!r} raised "
                          f"{describe_raised(exc)}; fix the module (--debug shows the traceback)") from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                            and v.__module__ == module.__name__)
            found = f"; nn.Module classes defined there: {', '.join(public)}" if public else ""
            raise ConfigError(f"model.type: {module_name!r} has no attribute {attr_path!r} "
                              f"(from {import_path!r}){found}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model.type: {import_path!r} is not a class or function; name the model class")
    return obj


def _dict_output(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook: a plain tensor becomes ``{"out": tensor}``; other non-dict outputs are an error."""
    if isinstance(output, torch.Tensor):
        return {"out": output}
    if isinstance(output, Mapping) and "out" in output:
        return None  # keep the model's own output
    raise ConfigError(f"model.type: {type(module).__name__}.forward returned {type(output).__name__}; return the "
                      "logits tensor [B, num_classes, H, W] or a dict with the logits under 'out'")


def check_custom_model(import_path: str, num_classes: int, extra: dict[str, Any]) -> Any:
    """Import the factory and check it accepts ``num_classes`` and ``extra`` (nothing is constructed)."""
    factory = import_factory(import_path)
    kwargs = {"num_classes": num_classes, **extra}
    try:
        # Binding first tells a wrong config (unknown / missing keyword) apart from a
        # TypeError raised by a bug inside the constructor.
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ConfigError(f"model.type: cannot construct {import_path}({given}): {exc}; make the constructor "
                          "accept num_classes and every extra key of the model section, or remove the extra "
                          "keys it does not take") from exc
    except ValueError:
        pass  # some builtins and C extensions have no signature; the call below decides
    return factory


def build_custom_model(import_path: str, num_classes: int, extra: dict[str, Any]) -> nn.Module:
    """Construct the custom model ``import_path`` as ``factory(num_classes=num_classes, **extra)``."""
    factory = check_custom_model(import_path, num_classes, extra)
    try:
        model = factory(num_classes=num_classes, **extra)
    except Exception as exc:  # noqa: BLE001 - user code may raise anything; the message names it
        raise ConfigError(f"model.type: {import_path}(num_classes={num_classes}"
                          f"{''.join(f', {k}={v!r}' for k, v in extra.items())}) raised "
                          f"{describe_raised(exc)}; fix the model's constructor or the extra keys of the "
                          "model section") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.type: {import_path} returned {type(model).__name__}, not a torch.nn.Module")
    model.register_forward_hook(_dict_output)
    return model
