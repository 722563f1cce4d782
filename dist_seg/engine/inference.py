"""Inference from a checkpoint alone: the model, classes and palette travel inside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config, config_from_dict
from ..data.palette import Palette
from ..errors import CheckpointError, ConfigError
from ..models import build_model
from .augment import BatchPreparer
from .checkpoint import load_checkpoint, load_model_state
from .runtime import Runtime


@dataclass
class Predictor:
    """A trained model ready to label images."""

    model: torch.nn.Module
    config: Config
    palette: Palette
    prep: BatchPreparer
    runtime: Runtime

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device, runtime: Runtime) -> "Predictor":
        """Rebuild the model described by the checkpoint's config and load its weights."""
        state = load_checkpoint(path)
        try:
            cfg = config_from_dict(state["config"], base_dir=None, source=f"{path} (embedded config)")
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {path} holds a config this dist_seg cannot read: {exc}") from exc
        palette = Palette.from_config(cfg.dataset)
        model = build_model(cfg.model, palette.num_classes)
        load_model_state(model, state, path)
        model = model.to(device, memory_format=runtime.memory_format).eval()
        prep = BatchPreparer(device, runtime.memory_format, tuple(cfg.training.image_size))
        return cls(model, cfg, palette, prep, runtime)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        """Class ids ``[H, W]`` uint8 per image; ``images`` is a uint8 ``[B,3,h,w]`` batch at network size,
        ``sizes`` the original (H, W) each prediction is resized back to."""
        dummy_masks = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.uint8)
        x, _ = self.prep.eval_batch(images, dummy_masks)
        with self.runtime.autocast():
            logits = self.model(x)["out"].float()
        out = []
        for i, size in enumerate(sizes):
            up = F.interpolate(logits[i:i + 1], size=size, mode="bilinear", align_corners=False)
            out.append(up.argmax(1)[0].to(torch.uint8).cpu().numpy())
        return out
