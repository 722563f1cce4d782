"""Device-side batch preparation: uint8 -> normalised float, and train-time augmentation.

The loader ships uint8 tensors (4x fewer bytes over PCIe than float32); conversion,
normalisation and augmentation run on the device, where they cost microseconds.
Flip and random scale + crop are one affine resampling per batch, applied with the same
grid to image (bilinear) and mask (nearest), so labels stay aligned. Photometric jitter
(optional) changes colours only, before normalisation; it draws from the same generator
first, so one checkpointed stream covers both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import IGNORE_INDEX, AugmentConfig, PhotometricConfig
from ..eval.inference import MEAN, STD
from .photometric import PhotometricRanges, photometric_jitter


@dataclass
class BatchPreparer:
    """Moves loader batches to the device in the layout and dtype the model wants."""

    device: torch.device
    memory_format: torch.memory_format
    output_size: tuple[int, int]
    void_index: int | None = None

    def __post_init__(self) -> None:
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(STD, device=self.device).view(1, 3, 1, 1) * 255.0)

    def to_device(self, images: torch.Tensor, masks: torch.Tensor, photometric: PhotometricConfig | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``[B,3,H,W]``, ``[B,H,W]`` -> normalised float images and int64 masks on the device.

        With ``photometric`` enabled the images are colour-jittered (from ``generator``) before normalisation.
        """
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        x = images.float()
        if photometric is not None and photometric.enabled:
            x = photometric_jitter(x / 255.0, _ranges(photometric), generator) * 255.0
        x = (x - self.mean) * self.inv_std
        x = x.contiguous(memory_format=self.memory_format)
        y = masks.long()
        if self.void_index is not None:
            y = torch.where(y == self.void_index, IGNORE_INDEX, y)
        return x, y

    def eval_batch(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation input: normalised, resized to the network size; masks stay at their resolution."""
        x, y = self.to_device(images, masks)
        if tuple(x.shape[-2:]) != tuple(self.output_size):
            x = F.interpolate(x, size=self.output_size, mode="bilinear", align_corners=False)
        return x, y

    def train_batch(self, images: torch.Tensor, masks: torch.Tensor, aug: AugmentConfig,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training input: normalised, randomly colour-jittered (if enabled), flipped and scale-cropped to ``output_size``."""
        x, y = self.to_device(images, masks, aug.photometric, generator)
        x, y = random_scale_crop_flip(x, y, self.output_size, aug, generator)
        return x.contiguous(memory_format=self.memory_format), y


def _ranges(cfg: PhotometricConfig) -> PhotometricRanges:
    return PhotometricRanges(brightness=cfg.brightness, contrast=cfg.contrast, saturation=cfg.saturation,
                             hue=cfg.hue, gamma=cfg.gamma)


def random_scale_crop_flip(x: torch.Tensor, y: torch.Tensor, size: tuple[int, int], aug: AugmentConfig,
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random zoom in ``[scale_min, scale_max]``, random offset and horizontal flip.

    Zooming out (scale < 1) pads: padded image pixels are 0 (the mean after
    normalisation) and padded mask pixels are ``IGNORE_INDEX``.
    """
    b = x.shape[0]
    identity = (aug.scale_min == aug.scale_max == 1.0) and not aug.hflip
    if identity and tuple(x.shape[-2:]) == tuple(size):
        return x, y
    # Random numbers come from the CPU generator so runs are reproducible across devices.
    u = torch.rand(b, 4, generator=generator)
    scale = aug.scale_min + (aug.scale_max - aug.scale_min) * u[:, 0]
    inv = 1.0 / scale
    span = (1.0 - inv).abs()
    tx = (u[:, 1] * 2 - 1) * span
    ty = (u[:, 2] * 2 - 1) * span
    flip = torch.where(u[:, 3] < 0.5, -1.0, 1.0) if aug.hflip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = inv * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = inv
    theta[:, 1, 2] = ty
    theta = theta.to(x.device, non_blocking=True)
    grid = F.affine_grid(theta, [b, 1, size[0], size[1]], align_corners=False)
    out_x = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    # Shift labels by one so that zero padding marks "outside the image".
    y_shifted = (y + 1).unsqueeze(1).to(x.dtype)
    out_y = F.grid_sample(y_shifted, grid.to(x.dtype), mode="nearest", padding_mode="zeros", align_corners=False)
    out_y = out_y.squeeze(1).round().long() - 1
    out_y = torch.where(out_y < 0, IGNORE_INDEX, out_y)
    return out_x, out_y
