"""The model card (``model.json`` beside the artifact): everything a runtime needs to use the artifact.

Readable without torch: the ONNX Runtime predictor takes the classes, palette and input
size from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import ClassSpec
from ..data.palette import Palette
from ..errors import ExportError

CARD_FORMAT = "dist_seg.model_card"
CARD_VERSION = 1
_REQUIRED = ("format", "version", "artifact", "classes", "input", "outputs")


def card_path(artifact: str | Path) -> Path:
    """``model.onnx`` -> ``model.json``: the card shares the artifact's stem."""
    return Path(artifact).with_suffix(".json")


def build_card(*, artifact: Path, artifact_format: str, model: dict[str, Any], palette: Palette,
               input_size: tuple[int, int], dynamic_size: bool, ids_dtype: str, with_logits: bool,
               mean: tuple[float, ...], std: tuple[float, ...], training_config: dict[str, Any],
               checkpoint: dict[str, Any], exporter: dict[str, Any], parity: dict[str, Any] | None) -> dict[str, Any]:
    """The card's content; ``parity`` None means the check was skipped (--no-check)."""
    height, width = input_size
    outputs = [{"name": "class_ids", "dtype": ids_dtype, "layout": "NHW",
                "shape": ["batch", "height", "width"], "meaning": "class id per pixel (index into classes)"}]
    if with_logits:
        outputs.append({"name": "logits", "dtype": "float32", "layout": "NCHW",
                        "shape": ["batch", len(palette.classes), "height", "width"],
                        "meaning": "unnormalised class scores (softmax gives probabilities)"})
    return {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "artifact": artifact.name,
        "artifact_format": artifact_format,
        "model": model,
        "classes": [{"id": i, "name": c.name, "color": list(c.color)} for i, c in enumerate(palette.classes)],
        "input": {
            "name": "images", "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "value_range": [0, 255],
            "height": height, "width": width, "dynamic_batch": True, "dynamic_size": dynamic_size,
            "resize": "bilinear to height x width (any size when dynamic_size)",
        },
        "outputs": outputs,
        "normalization": {"mean": list(mean), "std": list(std), "folded_into_graph": True,
                          "formula": "(images / 255 - mean) / std, per channel, inside the graph"},
        "training_config": training_config,
        "checkpoint": checkpoint,
        "exporter": exporter,
        "parity": parity if parity is not None else {"skipped": True},
    }


def read_card(artifact: str | Path) -> dict[str, Any]:
    """The card beside ``artifact``; a missing or foreign file raises :class:`ExportError`."""
    path = card_path(artifact)
    if not path.is_file():
        raise ExportError(f"{path} not found: the model card must sit beside {Path(artifact).name} "
                          "(python -m dist_seg.export writes both); copy it along with the model")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read model card {path} ({exc}); export the model again") from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ExportError(f"{path} is not a dist_seg model card; export the model with python -m dist_seg.export")
    missing = [k for k in _REQUIRED if k not in card]
    if missing:
        raise ExportError(f"model card {path} lacks {', '.join(missing)}; export the model again")
    if card["version"] > CARD_VERSION:
        raise ExportError(f"model card {path} has version {card['version']}, newer than this dist_seg "
                          f"understands ({CARD_VERSION}); upgrade dist_seg")
    return card


def card_palette(card: dict[str, Any]) -> Palette:
    """The class list and colours recorded in ``card``."""
    return Palette(tuple(ClassSpec(c["name"], tuple(c["color"])) for c in card["classes"]))
