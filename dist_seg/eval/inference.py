"""The one inference path: uint8 frames in, class scores at each frame's own size out.

evaluate, predict, the training-time validation and the visualisations all go through
these functions, so a frame is labelled the same way everywhere:

- ``whole`` mode resizes the frame to the network input size (``training.image_size``,
  times the TTA scale) the way the cache resized the training frames, runs the model once and
  upsamples the logits back to the frame;
- ``slide`` mode runs the model on overlapping ``crop`` windows of the frame at its own
  resolution (times the TTA scale), adds the logits of every window and divides each
  pixel by the number of windows that covered it;
- test-time augmentation averages the softmax over the scales and, with ``flip``, over
  the horizontally flipped input (flipped back before averaging).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint_file import load_checkpoint, load_model_state
from ..config import Config, config_from_dict
from ..data.decode import resize_image
from ..data.palette import Palette
from ..errors import CheckpointError, ConfigError
from ..models import build_model
from ..runtime.device import Runtime

# Default slide stride as a share of the crop: a third of each window overlaps the next.
# ImageNet statistics: what torchvision backbones (and their pretrained weights) expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

DEFAULT_STRIDE_FRACTION = 2 / 3
# Largest TTA scale: scales are factors of the network input (0.5-2 is usual); one like 75
# (a percentage) would ask for an input thousands of times larger and fail in an allocation.
MAX_TTA_SCALE = 4.0
# Smallest TTA scale: below a quarter of the network input a frame is a few pixels wide at the
# output stride, and its scores are noise averaged into the others.
MIN_TTA_SCALE = 0.25
# Smallest slide window side: below it the backbone's output (stride 8-32) is a pixel or two.
MIN_CROP = 16
# Most slide windows that may cover one pixel along each axis (crop / stride): beyond it each
# frame costs dozens of forward passes for no measurable gain.
MAX_WINDOW_OVERLAP = 8


@dataclass(frozen=True)
class InferenceSettings:
    """How frames are labelled: test-time augmentation and whole-frame or sliding-window inference."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    mode: Literal["whole", "slide"] = "whole"
    crop: tuple[int, int] | None = None  # slide window (H, W); None = the network input size
    stride: tuple[int, int] | None = None  # slide step (H, W); None = 2/3 of the crop

    def __post_init__(self) -> None:
        if not self.scales or any(not (MIN_TTA_SCALE <= s <= MAX_TTA_SCALE) for s in self.scales):
            raise ConfigError(f"--tta scales must be factors of the network input size from {MIN_TTA_SCALE:g} to "
                              f"{MAX_TTA_SCALE:g} (e.g. scales=0.75,1.0,1.25), got {list(self.scales)}")
        for name, size in (("crop", self.crop), ("stride", self.stride)):
            if size is not None and (len(size) != 2 or min(size) < 1):
                raise ConfigError(f"--{name} must be HxW with positive sizes, got {size}")
        if self.crop is not None and min(self.crop) < MIN_CROP:
            raise ConfigError(f"--crop {_hw(self.crop)}: each side must be at least {MIN_CROP} pixels (the model "
                              "sees the window at its output stride of 8-32 pixels)")
        if self.mode not in ("whole", "slide"):
            raise ConfigError(f"--mode must be whole or slide, got {self.mode!r}")
        if self.crop and self.stride:
            _check_window(self.crop, self.stride)

    def window(self, network_size: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The slide ``(crop, stride)``: as given, else the network input size and 2/3 of the crop."""
        crop = tuple(self.crop or network_size)
        stride = tuple(self.stride or (max(1, round(crop[0] * DEFAULT_STRIDE_FRACTION)),
                                       max(1, round(crop[1] * DEFAULT_STRIDE_FRACTION))))
        _check_window(crop, stride)
        return crop, stride

    @property
    def is_plain(self) -> bool:
        """One forward pass per frame, nothing averaged: logits can be used as they are."""
        return not self.flip and tuple(self.scales) == (1.0,)

    def describe(self, network_size: Sequence[int] | None = None) -> str:
        """A short label for reports, e.g. ``slide crop 96x128 stride 64x85, flip, scales 0.75,1,1.25``.

        With ``network_size`` the slide window is the one actually used (defaults resolved);
        without it a default shows as ``auto``.
        """
        if self.mode == "whole":
            parts = ["whole"]
        elif network_size is not None:
            crop, stride = self.window(network_size)
            parts = [f"slide crop {_hw(crop)} stride {_hw(stride)}"]
        else:
            parts = [f"slide crop {_hw(self.crop)} stride {_hw(self.stride)}"]
        if self.flip:
            parts.append("flip")
        if tuple(self.scales) != (1.0,):
            parts.append("scales " + ",".join(f"{s:g}" for s in self.scales))
        return ", ".join(parts)


def _check_window(crop: Sequence[int], stride: Sequence[int]) -> None:
    """A stride longer than the window would leave pixels between windows without a prediction; a tiny one
    would run the model dozens of times per pixel."""
    if any(c > MAX_WINDOW_OVERLAP * s for c, s in zip(crop, stride, strict=False)):
        shortest = (-(-crop[0] // MAX_WINDOW_OVERLAP), -(-crop[1] // MAX_WINDOW_OVERLAP))
        raise ConfigError(f"--stride {_hw(stride)} is under 1/{MAX_WINDOW_OVERLAP} of the slide window {_hw(crop)}: "
                          f"each pixel would be labelled more than {MAX_WINDOW_OVERLAP ** 2} times; use a stride "
                          f"of at least {_hw(shortest)} (default: 2/3 of the crop)")
    if stride[0] > crop[0] or stride[1] > crop[1]:
        raise ConfigError(f"--stride {_hw(stride)} is longer than the slide window {_hw(crop)} (--crop, default the "
                          "network input size): pixels between windows would get no prediction; use a stride no "
                          "longer than the crop")


def _hw(size: Sequence[int] | None) -> str:
    return "auto" if size is None else f"{size[0]}x{size[1]}"


def parse_size(text: str, what: str) -> tuple[int, int]:
    """``"HxW"`` -> (H, W); ConfigError naming the option otherwise."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{what} must be HxW (e.g. 512x512), got {text!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"{what} must be positive, got {text!r}")
    return h, w


def parse_tta(text: str | None) -> tuple[bool, tuple[float, ...]]:
    """``"flip,scales=0.75,1.0,1.25"`` -> (True, (0.75, 1.0, 1.25)); None or "" -> no TTA."""
    flip, scales = False, (1.0,)
    if not text:
        return flip, scales
    items = [t.strip() for t in text.split(",") if t.strip()]
    i = 0
    while i < len(items):
        item = items[i]
        if item == "flip":
            flip = True
        elif item.startswith("scales="):
            values = [item.removeprefix("scales=")]
            # Scales continue until the next keyword: "scales=0.75,1.0,flip".
            while i + 1 < len(items) and items[i + 1] != "flip" and not items[i + 1].startswith("scales="):
                i += 1
                values.append(items[i])
            try:
                scales = tuple(float(v) for v in values)
            except ValueError:
                raise ConfigError(f"--tta scales must be numbers, got {','.join(values)!r}") from None
        else:
            raise ConfigError(f"--tta: unknown item {item!r}; use flip and/or scales=S1,S2,... "
                              "(e.g. --tta flip,scales=0.75,1.0,1.25)")
        i += 1
    return flip, scales


# ----------------------------------------------------------------------------- tensors


def upsample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``[B, C, h, w]`` scores -> float32 ``[B, C, H, W]`` at ``size`` (bilinear; unchanged if already there)."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def upsample_argmax(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Class ids ``[B, H, W]`` (int64) of ``logits`` upsampled to ``size``: THE logits-to-labels step."""
    return upsample_logits(logits, size).argmax(1)


def normalise(images: torch.Tensor, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float, ImageNet-normalised, on ``device`` (the statistics the backbones expect)."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255.0
    x = (images.to(device, non_blocking=True).float() - mean) / std
    return x.contiguous(memory_format=memory_format)


def resize_frames(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` frames at ``size``, resized exactly as the cache resized the training frames.

    :func:`~dist_seg.data.decode.resize_image` (PIL bilinear on the uint8 pixels, antialiased
    when shrinking) is also what the exported model's predictor and parity check feed it, so a
    checkpoint and its export see the same pixels; a float resize of the normalised frame
    differs by the uint8 rounding, enough to flip near-tie pixels. Unchanged at their own size.
    """
    size = tuple(int(s) for s in size)
    if tuple(images.shape[-2:]) == size:
        return images
    frames = images.permute(0, 2, 3, 1).cpu().numpy()
    return torch.from_numpy(np.stack([resize_image(frame, size) for frame in frames]))


def forward_logits(model: torch.nn.Module, x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The model's float32 logits for ``x`` at the model's output resolution."""
    with runtime.autocast():
        out = model(x)
    return (out["out"] if isinstance(out, dict) else out).float()


def _starts(length: int, window: int, step: int) -> list[int]:
    """Window offsets covering ``length``; the last window is aligned to the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, step))
    return starts + [length - window]


def slide_logits(model: torch.nn.Module, x: torch.Tensor, crop: Sequence[int], stride: Sequence[int],
                 runtime: Runtime) -> torch.Tensor:
    """Logits ``[B, C, H, W]`` of ``x`` from overlapping ``crop`` windows, averaged where they overlap.

    A crop larger than the frame is clamped to the frame, so a frame smaller than the
    window is one forward pass.
    """
    height, width = x.shape[-2:]
    ch, cw = min(crop[0], height), min(crop[1], width)
    total: torch.Tensor | None = None
    counts = torch.zeros(1, 1, height, width, device=x.device)
    for top in _starts(height, ch, stride[0]):
        for left in _starts(width, cw, stride[1]):
            window = x[..., top:top + ch, left:left + cw]
            logits = upsample_logits(forward_logits(model, window, runtime), (ch, cw))
            if total is None:
                total = torch.zeros(x.shape[0], logits.shape[1], height, width, device=x.device)
            total[..., top:top + ch, left:left + cw] += logits
            counts[..., top:top + ch, left:left + cw] += 1
    assert total is not None
    return total / counts


def class_scores(model: torch.nn.Module, images: torch.Tensor, settings: InferenceSettings, runtime: Runtime,
                 network_size: Sequence[int], memory_format: torch.memory_format = torch.contiguous_format,
                 ) -> torch.Tensor:
    """Scores ``[B, C, H, W]`` at the frames' own size for a uint8 batch ``[B, 3, H, W]`` of equal-size frames.

    With :attr:`InferenceSettings.is_plain` these are logits; otherwise the mean softmax
    over every scale and flip. Either way ``argmax(1)`` gives the labels.
    """
    device = next(model.parameters()).device
    height, width = images.shape[-2:]
    base = tuple(network_size) if settings.mode == "whole" else (height, width)
    crop, stride = settings.window(network_size)
    total: torch.Tensor | None = None
    passes = 0
    for scale in settings.scales:
        scaled = normalise(resize_frames(images, (max(1, round(base[0] * scale)), max(1, round(base[1] * scale)))),
                           device, memory_format)
        for flipped in ((False, True) if settings.flip else (False,)):
            inp = scaled.flip(-1) if flipped else scaled
            if settings.mode == "whole":
                logits = forward_logits(model, inp, runtime)
            else:
                logits = slide_logits(model, inp, crop, stride, runtime)
            if flipped:
                logits = logits.flip(-1)
            logits = upsample_logits(logits, (height, width))
            if settings.is_plain:
                return logits
            probs = logits.softmax(1)
            total = probs if total is None else total.add_(probs)
            passes += 1
    assert total is not None
    return total / passes


# ----------------------------------------------------------------------------- from a checkpoint

CUSTOM_MODEL_OPTION = "--custom-model"


def trusted_model_config(cfg: Config, checkpoint: Path, custom_model: str | None) -> Config:
    """``cfg`` (a checkpoint's config) with the model type the user vouches for.

    A checkpoint is data: anyone can write ``model.type: "os:system"`` into one, so an import
    path stored in it is never imported. A custom model is rebuilt only from ``custom_model``,
    the import path given on the command line (or in the user's own config); a checkpoint of a
    built-in model needs none and refuses one, so a stray option cannot swap the network.
    """
    if not cfg.model.is_custom:
        if custom_model is not None:
            raise ConfigError(f"{CUSTOM_MODEL_OPTION} {custom_model}: checkpoint {checkpoint} holds the built-in "
                              f"model {cfg.model.type!r}, not a custom one; drop {CUSTOM_MODEL_OPTION}")
        return cfg
    if custom_model is None:
        raise CheckpointError(f"checkpoint {checkpoint} holds a custom model ({cfg.model.type!r}); a checkpoint is "
                              "data, so dist_seg does not import code named inside it. If you trust that code, "
                              f"name it yourself: {CUSTOM_MODEL_OPTION} {cfg.model.type}")
    if ":" not in custom_model:
        raise ConfigError(f"{CUSTOM_MODEL_OPTION} {custom_model!r} is not an import path; write it as "
                          f"'package.module:ClassName' (the checkpoint names {cfg.model.type!r})")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, type=custom_model))


@dataclass
class Predictor:
    """A trained model rebuilt from a checkpoint alone (model config, classes and palette travel inside)."""

    model: torch.nn.Module
    config: Config
    palette: Palette
    runtime: Runtime
    checkpoint: Path
    # Names of the sequences the checkpoint trained on (None: a checkpoint that predates the record).
    trained_sequences: tuple[str, ...] | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device, runtime: Runtime,
                        key: str = "--checkpoint", custom_model: str | None = None) -> Predictor:
        """Rebuild the model described by the checkpoint's config and load its weights.

        ``key`` is the option or config key that named ``path``, for the message when it does not exist.
        ``custom_model`` is the import path the user gave for a checkpoint of a custom model: the
        one named inside the checkpoint is never imported (see :func:`trusted_model_config`).
        """
        state = load_checkpoint(path, key)
        try:
            cfg = config_from_dict(state["config"], base_dir=None, source=f"{path} (embedded config)")
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {path} holds a config this dist_seg cannot read: {exc}") from exc
        cfg = trusted_model_config(cfg, Path(path), custom_model)
        palette = Palette.from_config(cfg.dataset)
        # The checkpoint holds every weight: the backbone_weights file it started from may be gone.
        model = build_model(dataclasses.replace(cfg.model, backbone_weights=None), palette.num_classes)
        load_model_state(model, state, path)
        model = model.to(device, memory_format=runtime.memory_format).eval()
        trained = state.get("train_sequences")
        return cls(model, cfg, palette, runtime, Path(path), tuple(trained) if trained is not None else None)

    @property
    def network_size(self) -> tuple[int, int]:
        """(H, W) the model was trained at."""
        return tuple(self.config.training.image_size)

    def describe(self, settings: InferenceSettings) -> str:
        """How frames are labelled, for logs and reports: ``settings`` with the slide window resolved, and the precision."""
        return f"{settings.describe(self.network_size)}, precision {self.runtime.precision}"

    @torch.no_grad()
    def scores(self, images: torch.Tensor, settings: InferenceSettings = InferenceSettings()) -> torch.Tensor:
        """:func:`class_scores` of a uint8 ``[B, 3, H, W]`` batch of equal-size frames."""
        return class_scores(self.model, images, settings, self.runtime, self.network_size,
                            self.runtime.memory_format)

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], settings: InferenceSettings = InferenceSettings()
                ) -> list[np.ndarray]:
        """Class ids ``[H, W]`` uint8 for each ``[H, W, 3]`` uint8 image (any sizes; equal sizes share a pass)."""
        out: list[np.ndarray] = []
        start = 0
        while start < len(images):
            end = start + 1
            while end < len(images) and images[end].shape == images[start].shape:
                end += 1
            batch = torch.from_numpy(np.stack(images[start:end])).permute(0, 3, 1, 2)
            ids = self.scores(batch, settings).argmax(1).to(torch.uint8).cpu().numpy()
            out.extend(ids)
            start = end
        return out
