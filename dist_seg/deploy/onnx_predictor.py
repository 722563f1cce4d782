"""Labelling images with an exported ONNX file and its model card, through ONNX Runtime only.

No torch model code runs here: the graph does the normalisation and the argmax, the card
gives classes, palette and input size. Predictions at the original image size upsample
the logits bilinearly (as :class:`~dist_seg.eval.inference.Predictor` does), so the
ids match checkpoint predictions up to float rounding at near-ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.decode import resize_image
from ..data.palette import Palette
from ..errors import ExportError
from .card import card_palette, read_card
from .requirements import require


def _source_index(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour indices and weight of the upper neighbour along one axis, half-pixel centres
    (torch's ``align_corners=False``), computed in float32 like torch's CPU kernel."""
    scale = np.float32(n_in / n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    low = np.minimum(src.astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (src - low).astype(np.float32)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[C, h, w]`` float32 to ``[C, H, W]``, matching ``F.interpolate(align_corners=False)``."""
    r0, r1, wr = _source_index(x.shape[1], size[0])
    c0, c1, wc = _source_index(x.shape[2], size[1])
    cols = x[:, :, c0] * (1 - wc) + x[:, :, c1] * wc
    return cols[:, r0] * (1 - wr)[:, None] + cols[:, r1] * wr[:, None]


def _providers(ort: Any, device: str) -> list[str]:
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ExportError("--device cuda: this onnxruntime has no CUDA provider; install onnxruntime-gpu "
                          "or use --device cpu")
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: str | Path, device: str = "cpu") -> tuple[Any, str, str]:
    """An ONNX Runtime session for ``path`` that also yields the logits; returns (session, ids name, logits name).

    An artifact exported without ``--logits`` keeps them internal; they are the input of
    the graph's single ArgMax, which is added as an extra output of the in-memory copy.
    """
    onnx = require("onnx", "ONNX inference")
    ort = require("onnxruntime", "ONNX inference")
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX model {path} does not exist; export one with python -m dist_seg.export")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise ExportError(f"cannot read ONNX model {path} ({type(exc).__name__}: {exc}); export it again") from exc
    argmax = [n for n in model.graph.node if n.op_type == "ArgMax"]
    if len(argmax) != 1:
        raise ExportError(f"{path} has {len(argmax)} ArgMax nodes, not the one of a dist_seg export; "
                          "export the model with python -m dist_seg.export")
    logits = argmax[0].input[0]
    outputs = [o.name for o in model.graph.output]
    if logits not in outputs:
        model.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=_providers(ort, device))
    return session, outputs[0], logits


@dataclass
class OnnxPredictor:
    """An ONNX artifact ready to label images, with the classes and palette of its model card."""

    session: Any
    ids_name: str
    logits_name: str
    palette: Palette
    input_size: tuple[int, int]
    card: dict[str, Any]

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu") -> OnnxPredictor:
        """Open ``path`` (``model.onnx``) and its card (``model.json``); ``device`` is cpu, cuda or auto."""
        card = read_card(path)
        session, ids_name, logits_name = open_session(path, device)
        size = (int(card["input"]["height"]), int(card["input"]["width"]))
        return cls(session, ids_name, logits_name, card_palette(card), size, card)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``[B,3,H,W]`` RGB -> (class ids ``[B,H,W]``, float32 logits ``[B,C,H,W]``) at the input size."""
        feed = {self.session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.uint8)}
        ids, logits = self.session.run([self.ids_name, self.logits_name], feed)
        return ids, logits

    def predict(self, images: Sequence[np.ndarray], settings: Any = None) -> list[np.ndarray]:
        """Class ids ``[H, W]`` uint8 for each ``[H, W, 3]`` uint8 image, like :meth:`Predictor.predict`.

        Frames are resized to the card's input size (as the training cache resized them) and
        the logits are resized back to each frame's size before the argmax. Test-time
        augmentation and sliding windows need the PyTorch model (``--checkpoint``).
        """
        if settings is not None and not (settings.is_plain and settings.mode == "whole"):
            raise ExportError("--tta and --mode slide need the PyTorch model: predict with --checkpoint, "
                              "or drop them to run the exported model")
        batch = np.stack([resize_image(rgb, self.input_size) for rgb in images])
        ids, logits = self.run(batch)
        out = []
        for i, rgb in enumerate(images):
            size = rgb.shape[:2]
            if tuple(size) == ids.shape[1:]:
                out.append(ids[i].astype(np.uint8))
            else:
                out.append(resize_bilinear(logits[i], tuple(size)).argmax(axis=0).astype(np.uint8))
        return out
