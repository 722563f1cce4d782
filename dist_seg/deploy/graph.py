"""The network as it is deployed: uint8 RGB in, normalisation inside, class ids (and optionally logits) out.

A deployment then needs no Python preprocessing: it hands camera frames to the graph
as they come (``[B, 3, H, W]`` uint8, RGB) and reads class ids back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint_file import load_checkpoint, load_model_state
from ..config import Config
from ..data.palette import Palette
from ..errors import CheckpointError
from ..eval.inference import MEAN, STD, Predictor
from ..models import describe_model
from ..runtime.device import inference_runtime

INPUT_NAME = "images"
IDS_NAME = "class_ids"
LOGITS_NAME = "logits"


def ids_dtype(num_classes: int) -> torch.dtype:
    """uint8 ids (what the id PNGs hold) while they fit, int64 beyond 256 classes."""
    return torch.uint8 if num_classes <= 256 else torch.int64


class DeployableModel(nn.Module):
    """Wraps a segmentation model: ``forward(images uint8 [B,3,H,W])`` -> ``ids [B,H,W]`` (, ``logits``).

    The normalisation is the one the trainer applies (:class:`~dist_seg.train.augment.BatchPreparer`,
    ImageNet mean/std on 0..255 values), so the artifact sees exactly what the model was trained on.
    """

    def __init__(self, model: nn.Module, num_classes: int, with_logits: bool) -> None:
        super().__init__()
        self.model = model
        self.with_logits = with_logits
        self.ids_dtype = ids_dtype(num_classes)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(STD).view(1, 3, 1, 1) * 255.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = (images.float() - self.mean) * self.inv_std
        logits = self.model(x)["out"].float()
        ids = logits.argmax(dim=1).to(self.ids_dtype)
        return (ids, logits) if self.with_logits else ids


@dataclass
class ExportSource:
    """A checkpoint's model in eval mode on the CPU, as predict runs it by default (float32), with what the model card reports."""

    predictor: Predictor
    checkpoint: Path
    weights: str  # "model" or "ema"
    epoch: int
    global_step: int
    best_miou: float | None
    raw_config: dict[str, Any]

    @property
    def config(self) -> Config:
        return self.predictor.config

    @property
    def palette(self) -> Palette:
        return self.predictor.palette

    @property
    def model_name(self) -> str:
        """The model type (and backbone for built-in types), for messages and the model card."""
        return describe_model(self.config.model)


def load_export_source(path: str | Path, ema: bool = False, custom_model: str | None = None) -> ExportSource:
    """Rebuild a checkpoint's model on the CPU in float32; ``ema`` loads its EMA weights instead.

    ``custom_model`` is the user's import path for a checkpoint of a custom model (the one
    stored in the checkpoint is never imported).

    Raises :class:`CheckpointError` when ``ema`` is asked for and the checkpoint holds none.
    """
    path = Path(path)
    cpu = torch.device("cpu")
    # What predict runs on a CPU by default (float32, eager): the reference the artifact is compared with.
    runtime = inference_runtime(cpu)
    predictor = Predictor.from_checkpoint(path, cpu, runtime, "--checkpoint", custom_model)
    state = load_checkpoint(path, "--checkpoint")
    if ema:
        if not isinstance(state.get("ema"), dict):
            raise CheckpointError(f"checkpoint {path} holds no EMA weights (no 'ema' state dict); export its "
                                  "regular weights by leaving out --ema, or use a checkpoint of a run trained "
                                  "with EMA")
        load_model_state(predictor.model, {"model": state["ema"]["module"]}, f"{path} (EMA weights)")
    best = state.get("best_metric")
    return ExportSource(predictor=predictor, checkpoint=path, weights="ema" if ema else "model",
                        epoch=int(state["epoch"]), global_step=int(state["global_step"]),
                        best_miou=float(best) if best is not None and best >= 0 else None,
                        raw_config=state["config"])


def deployable(source: ExportSource, with_logits: bool) -> DeployableModel:
    """The source's model wrapped for export, in eval mode."""
    return DeployableModel(source.predictor.model, source.palette.num_classes, with_logits).eval()
