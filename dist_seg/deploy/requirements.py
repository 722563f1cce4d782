"""The optional ``export`` extra (onnx, onnxscript, onnxruntime): a clear error when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ExportError

EXTRA_INSTALL = 'pip install "dist_seg[export]"'


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`ExportError` naming the ``export`` extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"{purpose} needs the Python package {module!r}, which is not installed ({exc}); "
                          f"install the export extra: {EXTRA_INSTALL}") from exc


def package_version(module: str) -> str | None:
    """Installed version of ``module``, or None when it is not installed."""
    try:
        return str(importlib.import_module(module).__version__)
    except ImportError:
        return None
