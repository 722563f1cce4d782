"""ONNX export through torch's dynamo exporter (onnxscript), with the TorchScript exporter as fallback."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.onnx import _constants as onnx_constants

from ..errors import ExportError
from .graph import IDS_NAME, INPUT_NAME, LOGITS_NAME, DeployableModel
from .requirements import require

# The TorchScript exporter supports opsets up to 20; 17 is what its users most often target.
TORCHSCRIPT_DEFAULT_OPSET = 17
# Opsets torch.onnx.export accepts, by its own bounds (7 and 23 in torch 2.14).
MIN_OPSET = onnx_constants.ONNX_MIN_OPSET
MAX_OPSET = onnx_constants.ONNX_MAX_OPSET
_OPERATOR = re.compile(r"\baten(?:::|\.)([A-Za-z0-9_]+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class OnnxExportInfo:
    """How the artifact was produced."""

    exporter: str  # "dynamo" or "torchscript"
    opset: int


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _operators(*errors: BaseException) -> list[str]:
    """aten operator names quoted in exporter errors (the usual culprit of a failed export)."""
    found = [f"aten::{m.group(1)}" for exc in errors for m in _OPERATOR.finditer(str(exc))]
    return list(dict.fromkeys(found))


def _opset_of(path: Path) -> int:
    onnx = require("onnx", "ONNX export")
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def check_opset(opset: int | None) -> None:
    """Refuse, before the model is loaded, an ``--opset`` that torch's exporters cannot write."""
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset}: torch {torch.__version__} exports ONNX opsets {MIN_OPSET} to "
                          f"{MAX_OPSET}; choose one in that range (or leave --opset out for the exporter's default)")


def export_onnx(wrapper: DeployableModel, example: torch.Tensor, path: Path, dynamic_size: bool,
                opset: int | None, model_name: str, log: Callable[[str], None]) -> OnnxExportInfo:
    """Write ``wrapper`` as one self-contained ONNX file (no external data) at ``path``.

    The batch dimension is always dynamic; ``dynamic_size`` makes height and width dynamic
    too. ``opset`` None takes each exporter's default. Raises :class:`ExportError` naming the
    operators and the model when neither exporter manages, and when the file holds another opset
    than ``opset`` (the dynamo exporter keeps its own when converting down fails).
    """
    info = _export_onnx(wrapper, example, path, dynamic_size, opset, model_name, log)
    if opset is not None and info.opset != opset:
        path.unlink(missing_ok=True)
        raise ExportError(f"--opset {opset}: the {info.exporter} exporter could only write opset {info.opset} for "
                          f"model {model_name} (converting it down failed); export with --opset {info.opset} "
                          "(or leave --opset out), or use --format torch-export")
    return info


def _export_onnx(wrapper: DeployableModel, example: torch.Tensor, path: Path, dynamic_size: bool,
                 opset: int | None, model_name: str, log: Callable[[str], None]) -> OnnxExportInfo:
    """Both exporters in turn; see :func:`export_onnx`."""
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    outputs = [IDS_NAME, LOGITS_NAME] if wrapper.with_logits else [IDS_NAME]
    dims = (0, 2, 3) if dynamic_size else (0,)
    try:
        torch.onnx.export(
            wrapper, (example,), str(path), dynamo=True, external_data=False, verbose=False,
            input_names=[INPUT_NAME], output_names=outputs, opset_version=opset,
            dynamic_shapes={INPUT_NAME: {d: torch.export.Dim.DYNAMIC for d in dims}},
        )
        return OnnxExportInfo("dynamo", _opset_of(path))
    except Exception as dynamo_exc:  # noqa: BLE001 - the exporter raises many types; all mean "try the other one"
        dynamo_error = dynamo_exc
    log(f"export: the dynamo ONNX exporter failed ({_first_line(dynamo_error)}); "
        "falling back to the TorchScript exporter")
    path.unlink(missing_ok=True)
    nchw = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    nhw = {0: "batch", 1: "height", 2: "width"} if dynamic_size else {0: "batch"}
    axes = {name: layout for name, layout in ((INPUT_NAME, nchw), (IDS_NAME, nhw), (LOGITS_NAME, nchw))
            if name in (INPUT_NAME, *outputs)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation and tracer warnings are about the fallback itself
            torch.onnx.export(
                wrapper, (example,), str(path), dynamo=False, verbose=False, input_names=[INPUT_NAME], output_names=outputs,
                opset_version=opset or TORCHSCRIPT_DEFAULT_OPSET, dynamic_axes=axes,
            )
    except Exception as script_exc:  # noqa: BLE001
        path.unlink(missing_ok=True)
        ops = _operators(dynamo_error, script_exc)
        culprit = f"unsupported operator(s) {', '.join(ops)}" if ops else "see the exporter messages"
        raise ExportError(
            f"cannot export model {model_name} to ONNX ({culprit}). dynamo exporter: {_first_line(dynamo_error)}; "
            f"TorchScript exporter: {_first_line(script_exc)}. Replace the operator in the model's forward with "
            "ONNX-exportable ones, try another --opset, or use --format torch-export"
        ) from script_exc
    return OnnxExportInfo("torchscript", _opset_of(path))
