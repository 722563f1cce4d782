"""torch.export artifacts (``.pt2``): the same uint8-in, class-ids-out contract as the ONNX file."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import ExportError
from .graph import INPUT_NAME, DeployableModel


def export_program(wrapper: DeployableModel, example: torch.Tensor, dynamic_size: bool,
                   model_name: str) -> torch.export.ExportedProgram:
    """Trace ``wrapper`` with torch.export; the batch is dynamic, height/width too with ``dynamic_size``."""
    dims = (0, 2, 3) if dynamic_size else (0,)
    try:
        return torch.export.export(wrapper, (example,),
                                   dynamic_shapes={INPUT_NAME: {d: torch.export.Dim.DYNAMIC for d in dims}})
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types for untraceable code
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else ""
        raise ExportError(f"cannot export model {model_name} with torch.export ({type(exc).__name__}: {first}); "
                          "make the model's forward traceable (no data-dependent Python control flow, no "
                          "conversions to Python numbers or numpy), or try --format onnx") from exc


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """Write the program as a ``.pt2`` archive.

    The archive is built in memory and written in one piece: torch's archive writer aborts the
    whole process when a write to a file fails (a full disk), where a plain write raises OSError.
    """
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getbuffer())


def load_program(path: Path) -> torch.nn.Module:
    """A ``.pt2`` archive as a callable module (what a deployment in Python runs)."""
    return torch.export.load(str(path)).module()


class _LogitsCapture(torch.fx.Interpreter):
    """Runs an exported graph and keeps the tensor its argmax reads: the logits."""

    logits: torch.Tensor | None = None

    def run_node(self, node: torch.fx.Node) -> object:
        result = super().run_node(node)
        if node.op == "call_function" and node.target is torch.ops.aten.argmax.default:
            self.logits = self.env[node.args[0]]
        return result


def program_runner(path: Path) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Runs the saved ``.pt2`` at ``path``: uint8 ``[B,3,H,W]`` -> (ids, logits) as numpy, logits
    taken from inside the graph when the artifact does not output them."""
    module = load_program(path)

    @torch.no_grad()
    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        capture = _LogitsCapture(module)
        out = capture.run(torch.from_numpy(images))
        ids = out if isinstance(out, torch.Tensor) else out[0]
        if capture.logits is None:
            raise ExportError(f"{path} has no argmax: it is not a dist_seg export")
        return ids.numpy(), capture.logits.float().numpy()

    return run
