"""Decoding: image and mask files to uint8 arrays, the one place where files are read.

The dataset checks, the cache builder, the decode-on-the-fly dataset and predict read
frames through the functions here, so a frame is judged (and converted to class ids) the
same way everywhere. Pixel modes are handled explicitly: 16-bit greyscale frames are
scaled to 8 bits (not clipped), alpha channels of masks must be fully opaque (a
transparent pixel has no class), black-and-white masks read as their colours, frames with an
EXIF orientation are turned upright, and any mode without a faithful 8-bit RGB reading is
rejected with the reason.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, ImageOps

from ..config import DatasetConfig
from ..config.classes import IGNORE_INDEX, ClassSpec
from ..errors import DataError
from .discovery import Frame
from .palette import Palette
from .problems import Problem

_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# Single-channel modes whose pixel values are the stored numbers (class ids in index masks).
_GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L")
# Greyscale wider than 8 bits (16-bit PNGs): scaled to 0..255 for images.
_WIDE_GREY_MODES = ("I", "I;16", "I;16B", "I;16L")
# Modes Pillow converts to 8-bit RGB faithfully (alpha dropped, palette looked up).
_RGB_CONVERTIBLE = ("1", "L", "P", "RGBA", "LA", "PA", "RGBX", "CMYK", "YCbCr")
_ALPHA_MODES = ("RGBA", "LA", "PA")
# 8-bit greyscale masks that an RGB palette can read exactly (grey v = colour (v, v, v)).
_BLACK_AND_WHITE_MODES = ("1", "L")
_FIX_IMAGE_MODE = "save frames as 8-bit RGB or greyscale PNG/JPEG"


@dataclass(frozen=True)
class LabelSpec:
    """How masks are read: the class colours, the mask format, and what unknown values become."""

    classes: tuple[ClassSpec, ...]
    mask_format: Literal["rgb", "index"]
    unknown_colors: Literal["error", "void"]

    @classmethod
    def from_config(cls, ds: DatasetConfig) -> LabelSpec:
        return cls(tuple(ds.classes), ds.mask_format, ds.unknown_colors)

    @property
    def palette(self) -> Palette:
        return _palette(self.classes)


@functools.lru_cache(maxsize=4)
def _palette(classes: tuple[ClassSpec, ...]) -> Palette:
    # One 16 MiB lookup table per process and class list, not one per call or per pickle.
    return Palette(classes)


@dataclass
class FrameCheck:
    """What checking one frame found. ``unknown`` maps stray mask values to pixel counts."""

    frame: Frame
    problems: list[Problem] = field(default_factory=list)
    unknown: dict[tuple[int, int, int] | int, int] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # (H, W) of the image when readable
    # Index masks: the share of pixels marked IGNORE_INDEX ("not annotated"); None for rgb masks.
    unannotated: float | None = None


@dataclass
class DecodedFrame:
    """A checked frame with its arrays at the requested size (None where it is unusable)."""

    check: FrameCheck
    image: np.ndarray | None  # [3, H, W] uint8
    mask: np.ndarray | None  # [H, W] uint8 class ids, IGNORE_INDEX = ignore


# ----------------------------------------------------------------------------- pixel modes


def image_to_rgb(image: Image.Image) -> tuple[np.ndarray | None, str | None]:
    """``[H, W, 3]`` uint8 of a decoded frame, or ``(None, why)`` when its mode cannot be read faithfully."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image), None
    if mode in _WIDE_GREY_MODES:
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            return None, f"is a 32-bit greyscale ({mode}) image with values outside 0..65535; {_FIX_IMAGE_MODE}"
        # Scale, not clip: Pillow's convert("RGB") would turn every value above 255 white.
        grey = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode in _RGB_CONVERTIBLE:
        return np.asarray(image.convert("RGB")), None
    return None, f"has pixel mode {mode}, which has no faithful 8-bit RGB reading; {_FIX_IMAGE_MODE}"


def upright(image: Image.Image) -> Image.Image:
    """The frame as every viewer shows it (and as its mask was drawn).

    Cameras store a frame taken sideways or upside down as the sensor read it, with an EXIF
    orientation tag saying how to turn it; ignoring the tag would pair the stored pixels
    with a mask drawn on the turned picture.
    """
    if image.getexif().get(ExifTags.Base.Orientation, 1) in (0, 1):
        return image
    return ImageOps.exif_transpose(image)


def _transparent_pixels(mask: Image.Image) -> int:
    if mask.mode not in _ALPHA_MODES:
        return 0
    return int((np.asarray(mask.getchannel("A")) != 255).sum())


def _open_verified(path: Path) -> tuple[Image.Image | None, str | None]:
    """Fully read an image file; ``verify`` catches bad checksums, ``load`` truncation."""
    try:
        with Image.open(path) as probe:
            probe.verify()
        with Image.open(path) as image:
            image.load()
        return upright(image), None
    except _READ_ERRORS as exc:
        return None, f"{type(exc).__name__}: {exc}"


def resize_image(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``[H, W, 3]`` -> ``[3, h, w]`` uint8 at ``size`` = (h, w); bilinear (antialiased when shrinking)."""
    if size is not None and rgb.shape[:2] != tuple(size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR))
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def resize_mask(ids: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """``[H, W]`` class ids at ``size`` = (h, w); nearest neighbour so no id is invented."""
    if size is not None and ids.shape != tuple(size):
        ids = np.asarray(Image.fromarray(ids).resize((size[1], size[0]), Image.NEAREST))
    # Writable, because torch.from_numpy warns on (and must not write through) read-only arrays.
    return np.require(ids, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])


def mask_to_ids(mask: Image.Image, spec: LabelSpec
                ) -> tuple[np.ndarray | None, dict[tuple[int, int, int] | int, int], str | None]:
    """Convert a decoded mask to uint8 class ids.

    Returns ``(ids, unknown, error)``: ``unknown`` maps values outside the class list to
    pixel counts (they are IGNORE_INDEX in ``ids``); ``error`` explains a mask that
    cannot be read in this format at all (``ids`` is then None).
    """
    transparent = _transparent_pixels(mask)
    if transparent:
        return None, {}, (f"has {transparent} transparent pixels (mode {mask.mode}): a transparent pixel has no "
                          "class; save masks without an alpha channel (or fully opaque)")
    if spec.mask_format == "rgb":
        if mask.mode in _BLACK_AND_WHITE_MODES:
            return _grey_mask_as_colours(mask, spec)
        if mask.mode in _GREY_MODES or mask.mode == "LA":
            return None, {}, (f"is a single-channel ({mask.mode}) mask but dataset.mask_format is rgb; "
                              "if it holds class ids set dataset.mask_format: index")
        if mask.mode not in ("RGB", "RGBA", "P", "PA"):
            return None, {}, f"has pixel mode {mask.mode}, which cannot hold exact palette colours; save it as RGB PNG"
        rgb = np.asarray(mask if mask.mode == "RGB" else mask.convert("RGB"))
        ids = spec.palette.rgb_to_ids(rgb)
        unknown = spec.palette.unknown_colors(rgb) if (ids == IGNORE_INDEX).any() else {}
        return ids, unknown, None
    if mask.mode not in (*_GREY_MODES, "P", "LA", "PA"):
        return None, {}, (f"is a {mask.mode} colour mask but dataset.mask_format is index; "
                          "set dataset.mask_format: rgb or save masks as single-channel class ids")
    # Palette ("P") PNGs store the indices; opaque LA / PA masks keep them in the first channel.
    values = np.asarray(mask) if mask.mode not in ("LA", "PA") else np.asarray(mask)[..., 0]
    # IGNORE_INDEX is a valid label in index masks: it means "not annotated".
    bad = (values >= len(spec.classes)) & (values != IGNORE_INDEX)
    if not bad.any():
        return values.astype(np.uint8, copy=False), {}, None
    stray, counts = np.unique(values[bad], return_counts=True)
    ids = np.where(bad, IGNORE_INDEX, values).astype(np.uint8)
    return ids, {int(v): int(n) for v, n in zip(stray, counts, strict=False)}, None


def _grey_mask_as_colours(mask: Image.Image, spec: LabelSpec
                          ) -> tuple[np.ndarray | None, dict[tuple[int, int, int] | int, int], str | None]:
    """An 8-bit greyscale mask under ``mask_format: rgb``: grey value v is the colour (v, v, v).

    That reading is exact, and it is what a black-and-white (binary) mask means. A grey mask
    whose values are not all class colours more likely holds class ids: that stays an error
    pointing to ``mask_format: index`` rather than a flood of unknown colours.
    """
    rgb = np.asarray(mask.convert("RGB"))
    ids = spec.palette.rgb_to_ids(rgb)
    if (ids == IGNORE_INDEX).any():
        return None, {}, (f"is a single-channel ({mask.mode}) mask whose grey values are not all class colours "
                          "but dataset.mask_format is rgb; if it holds class ids set dataset.mask_format: index")
    return ids, {}, None


def decode_frame(frame: Frame, spec: LabelSpec, size: tuple[int, int] | None, with_image: bool) -> DecodedFrame:
    """Read, check and convert one frame; arrays are None when the frame has an error.

    Unknown mask values are recorded in ``check.unknown``; with ``unknown_colors: error``
    they make the frame unusable, with ``void`` they are served as IGNORE_INDEX.
    """
    check = FrameCheck(frame)
    image, image_error = _open_verified(frame.image)
    mask, mask_error = _open_verified(frame.mask)
    if image_error:
        check.problems.append(Problem("unreadable", frame.image, f"cannot read image ({image_error})",
                                      "re-export or replace the file (a truncated copy is the usual cause), "
                                      "or delete it together with its mask"))
    if mask_error:
        check.problems.append(Problem("unreadable", frame.mask, f"cannot read mask ({mask_error})",
                                      "re-export or replace the mask, or delete it together with its frame"))
    if image is None or mask is None:
        return DecodedFrame(check, None, None)
    check.size = (image.height, image.width)
    if image.size != mask.size:
        check.problems.append(Problem(
            "size-mismatch", frame.mask,
            f"mask is {mask.height}x{mask.width} (HxW) but its image {frame.image.name} is "
            f"{image.height}x{image.width}",
            "masks must have exactly the size of their frame: regenerate or resize the mask (nearest neighbour)"))
        return DecodedFrame(check, None, None)
    ids, check.unknown, format_error = mask_to_ids(mask, spec)
    if ids is not None and spec.mask_format == "index":
        check.unannotated = float(np.count_nonzero(ids == IGNORE_INDEX)) / ids.size
    if format_error:
        check.problems.append(Problem("mask-format", frame.mask, f"mask {format_error}",
                                      "make all masks use one format matching dataset.mask_format"))
    rgb, mode_error = image_to_rgb(image)
    if mode_error:
        check.problems.append(Problem("image-mode", frame.image, f"image {mode_error}",
                                      "convert the frame, or delete it together with its mask"))
    if ids is None or rgb is None or (check.unknown and spec.unknown_colors == "error"):
        return DecodedFrame(check, None, None)
    image_array = resize_image(rgb, size) if with_image else None
    return DecodedFrame(check, image_array, resize_mask(ids, size))


def check_frame(frame: Frame, spec: LabelSpec) -> FrameCheck:
    """Decode one frame at full size and return only what was found (no arrays)."""
    return decode_frame(frame, spec, None, with_image=False).check


def load_image(path: Path | str, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image to ``[3, H, W]`` uint8 at ``size``; DataError if it cannot be read."""
    try:
        with Image.open(path) as image:
            rgb, error = image_to_rgb(upright(image))
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({exc}); run python -m dist_seg.validate CONFIG "
                        "to list every unreadable file") from exc
    if error:
        raise DataError(f"{path}: image {error}")
    return resize_image(rgb, size)


def load_mask(path: Path | str, spec: LabelSpec, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one mask to ``[H, W]`` uint8 class ids at ``size``; DataError if unusable."""
    try:
        with Image.open(path) as mask:
            mask.load()
            mask = upright(mask)
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read mask ({exc}); run python -m dist_seg.validate CONFIG "
                        "to list every unreadable file") from exc
    ids, unknown, error = mask_to_ids(mask, spec)
    if error:
        raise DataError(f"{path}: mask {error}")
    if unknown and spec.unknown_colors == "error":
        raise DataError(f"{path}: mask values not in dataset.classes: {sorted(unknown)}; "
                        "run python -m dist_seg.validate CONFIG for the full list, or set dataset.unknown_colors: void")
    return resize_mask(ids, size)


