"""Photometric augmentation on the device: per-sample random brightness, contrast, saturation, hue, gamma.

Works on float images in ``[0, 1]`` (``uint8 / 255``), before normalisation, and returns
images in ``[0, 1]``: apply it between the uint8 -> float conversion and the mean/std
normalisation. Every operation maps a pixel's colour to a new colour without moving it, so
masks need no change and stay aligned.

All random numbers come from the ``torch.Generator`` passed in, drawn on the CPU (as the
geometric augmentation does) so a run is reproducible on any device, and so the trainer's
checkpointed augmentation generator covers this augmentation too. The per-sample factors
and colour matrices reach the device in one non-blocking copy (from pinned memory on CUDA),
so the host never waits for the device here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# RGB <-> YIQ (NTSC): Y is luminance, I/Q the chroma plane; a hue shift is a rotation of
# (I, Q), a saturation change a scaling of it. One 3x3 matrix per sample does both.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.596, -0.274, -0.322],
                            [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_LUMA = _RGB_TO_YIQ[0]


@dataclass(frozen=True)
class PhotometricRanges:
    """How far each property may move; 0 switches that property off.

    Each sample draws its own factor uniformly in ``[1 - r, 1 + r]`` (brightness, contrast,
    saturation, gamma exponent) or its own hue shift in ``[-hue, hue]`` turns of the colour
    wheel (0.5 = half a turn).
    """

    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.02
    gamma: float = 0.2

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation", "gamma"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"photometric {name} range must be in [0, 1), got {value}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"photometric hue range must be in [0, 0.5] turns, got {self.hue}")

    @property
    def enabled(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue, self.gamma))


def _colour_matrices(saturation: torch.Tensor, hue_turns: torch.Tensor) -> torch.Tensor:
    """Per-sample RGB -> RGB matrices ``[B, 3, 3]`` scaling and rotating the chroma plane."""
    angle = hue_turns * (2 * math.pi)
    cos, sin = torch.cos(angle) * saturation, torch.sin(angle) * saturation
    chroma = torch.zeros(len(saturation), 3, 3, dtype=torch.float64)
    chroma[:, 0, 0] = 1.0
    chroma[:, 1, 1], chroma[:, 1, 2] = cos, -sin
    chroma[:, 2, 1], chroma[:, 2, 2] = sin, cos
    return _YIQ_TO_RGB @ chroma @ _RGB_TO_YIQ


def photometric_jitter(images: torch.Tensor, ranges: PhotometricRanges,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly jitter each image of ``images`` (float ``[B, 3, H, W]`` in [0, 1]); returns a new tensor in [0, 1].

    Order: brightness (scale), contrast (blend with the image's mean luminance),
    saturation and hue (one colour matrix), gamma. Draws exactly ``5 * B`` numbers from
    ``generator`` whatever the ranges, so switching one property off does not change the
    others' random streams.
    """
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"photometric_jitter expects float images [B, 3, H, W], got {tuple(images.shape)} "
                         f"{images.dtype}")
    b = images.shape[0]
    u = torch.rand(b, 5, generator=generator, dtype=torch.float64) * 2 - 1  # uniform in [-1, 1)
    if not ranges.enabled:
        return images.clone()
    brightness = 1 + ranges.brightness * u[:, 0]
    contrast = 1 + ranges.contrast * u[:, 1]
    saturation = 1 + ranges.saturation * u[:, 2]
    hue = ranges.hue * u[:, 3]
    gamma = 1 + ranges.gamma * u[:, 4]

    # One host tensor [luma (3) | per sample: brightness, contrast, gamma, colour matrix (9)], one copy.
    packed = torch.cat([_LUMA, torch.cat([torch.stack([brightness, contrast, gamma], 1),
                                          _colour_matrices(saturation, hue).flatten(1)], 1).flatten()])
    if images.device.type == "cuda":
        packed = packed.pin_memory()
    packed = packed.to(images.device, non_blocking=True).to(images.dtype)
    luma_weights, per_sample = packed[:3], packed[3:].view(b, 12)

    def factor(column: int) -> torch.Tensor:
        return per_sample[:, column].view(b, 1, 1, 1)

    x = (images * factor(0)).clamp_(0, 1)
    luma = torch.einsum("c,bchw->bhw", luma_weights, x)
    mean = luma.mean(dim=(1, 2)).view(b, 1, 1, 1)
    x = ((x - mean) * factor(1) + mean).clamp_(0, 1)
    x = torch.einsum("bij,bjhw->bihw", per_sample[:, 3:].view(b, 3, 3), x).clamp_(0, 1)
    return x.pow_(factor(2))
