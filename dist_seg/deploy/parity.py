"""Parity check: the exported artifact against the PyTorch model it came from, on real frames.

The reference is what ``predict --checkpoint`` computes on a CPU by default (float32, see
:func:`~dist_seg.runtime.device.inference_runtime`). Thresholds, both must hold at every checked size:

* class agreement: at least ``MIN_CLASS_AGREEMENT`` (99.9 %) of pixels get the same class id;
* logits: ``max |artifact - pytorch| / max(1, max |pytorch|)`` at most ``MAX_RELATIVE_LOGIT_DIFF`` (1e-3).

Exporters only reorder float operations, which moves logits by ~1e-6 relative and can flip
the class of a pixel whose two best logits tie within that; a real export bug (a
constant-folded size, a dropped normalisation, a wrong weight) moves them by orders of
magnitude more.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..config import Config
from ..data.decode import load_image, resize_image
from ..data.discovery import discover
from ..errors import DataError
from ..eval.inference import forward_logits, normalise
from ..synth import generate_dataset
from .graph import ExportSource

MIN_CLASS_AGREEMENT = 0.999
MAX_RELATIVE_LOGIT_DIFF = 1e-3
PARITY_FRAMES = 3  # an odd batch, unlike the export example's 2: the batch dimension is exercised too


class ArtifactRunner(Protocol):
    """Runs an exported artifact: uint8 ``[B,3,H,W]`` -> (class ids ``[B,H,W]``, logits ``[B,C,H,W]``)."""

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class SizeParity:
    """Agreement at one input size."""

    height: int
    width: int
    max_abs_logit_diff: float
    relative_logit_diff: float
    class_mismatch_share: float
    error: str | None = None  # the artifact failed to run at this size

    @property
    def passed(self) -> bool:
        return (self.error is None and self.class_mismatch_share <= 1.0 - MIN_CLASS_AGREEMENT
                and self.relative_logit_diff <= MAX_RELATIVE_LOGIT_DIFF)


@dataclass(frozen=True)
class ParityReport:
    """Agreement at every checked size, and where the frames came from."""

    frames: int
    frames_source: str
    sizes: tuple[SizeParity, ...]

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.sizes)

    def to_dict(self) -> dict:
        """The model card's ``parity`` entry."""
        return {
            "passed": self.passed,
            "frames": self.frames,
            "frames_source": self.frames_source,
            "thresholds": {"min_class_agreement": MIN_CLASS_AGREEMENT,
                           "max_relative_logit_diff": MAX_RELATIVE_LOGIT_DIFF},
            "sizes": [asdict(s) for s in self.sizes],
        }

    def lines(self) -> list[str]:
        """One human-readable line per size."""
        return [f"parity {s.height}x{s.width}: the artifact failed to run: {s.error} -> FAIL" if s.error else
                f"parity {s.height}x{s.width}: max |logit diff| {s.max_abs_logit_diff:.3g} "
                f"(relative {s.relative_logit_diff:.3g}, limit {MAX_RELATIVE_LOGIT_DIFF:g}), "
                f"class differs on {100 * s.class_mismatch_share:.4f}% of pixels "
                f"(limit {100 * (1 - MIN_CLASS_AGREEMENT):.2f}%) -> {'ok' if s.passed else 'FAIL'}"
                for s in self.sizes]


def check_sizes(height: int, width: int, dynamic_size: bool) -> list[tuple[int, int]]:
    """The export size, plus with a dynamic size a second, larger one that is no multiple of the stride."""
    sizes = [(height, width)]
    if dynamic_size:
        sizes.append((height * 3 // 2, width * 4 // 3))
    return sizes


def parity_frames(cfg: Config, count: int, size: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    """``count`` RGB frames ``[H, W, 3]``: spread over the checkpoint's dataset when it is reachable,
    else synthetic DAVID-style frames of ``size``; returns the frames and where they came from."""
    root = cfg.dataset.root
    try:
        listed = discover(root, cfg.dataset).frames if (Path(root) / cfg.dataset.images).is_dir() else []
    except DataError:
        listed = []
    if listed:
        picks = [listed[i] for i in np.linspace(0, len(listed) - 1, min(count, len(listed))).round().astype(int)]
        return [_load_rgb(frame.image) for frame in picks], f"dataset {root}"
    with tempfile.TemporaryDirectory(prefix="dist_seg_parity_") as tmp:
        generate_dataset(Path(tmp), sequences=count, frames=1, size=size, seed=0)
        frames = [_load_rgb(path) for path in sorted(Path(tmp, "Images").glob("*/*.png"))]
    return frames, f"synthetic (dataset root {root} not reachable)"


def _load_rgb(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 at native size, decoded as training and predict decode (16-bit, palette, EXIF...)."""
    return load_image(path, None).transpose(1, 2, 0)


def _batch(frames: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Frames resized the way predict resizes them, as a uint8 ``[B,3,H,W]`` batch."""
    return np.ascontiguousarray(np.stack([resize_image(f, size) for f in frames]))


def pytorch_logits(source: ExportSource) -> Callable[[np.ndarray], np.ndarray]:
    """The reference: what ``predict --checkpoint`` computes on a CPU by default (its normalisation, its
    forward pass, its precision: float32), at the artifact's input size."""
    predictor = source.predictor

    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        x = normalise(torch.from_numpy(images), torch.device("cpu"), predictor.runtime.memory_format)
        return forward_logits(predictor.model, x, predictor.runtime).numpy()

    return run


def measure_parity(reference: Callable[[np.ndarray], np.ndarray], artifact: ArtifactRunner,
                   frames: list[np.ndarray], frames_source: str, sizes: list[tuple[int, int]]) -> ParityReport:
    """Compare ``artifact`` with ``reference`` on ``frames`` at each of ``sizes``."""
    results = []
    for size in sizes:
        images = _batch(frames, size)
        expected = reference(images)
        try:
            ids, logits = artifact(images)
        except Exception as exc:  # noqa: BLE001 - a runtime rejecting the size is a parity failure, not a crash
            results.append(SizeParity(size[0], size[1], float("inf"), float("inf"), 1.0,
                                      f"{type(exc).__name__}: {str(exc).strip()[:300]}"))
            continue
        if logits.shape != expected.shape or ids.shape != (expected.shape[0], *expected.shape[2:]):
            # A size baked in as a constant shows up here rather than as a numeric difference.
            results.append(SizeParity(size[0], size[1], float("inf"), float("inf"), 1.0))
            continue
        diff = float(np.abs(logits.astype(np.float32) - expected).max())
        scale = max(1.0, float(np.abs(expected).max()))
        mismatch = float((ids.astype(np.int64) != expected.argmax(axis=1)).mean())
        results.append(SizeParity(size[0], size[1], diff, diff / scale, mismatch))
    return ParityReport(len(frames), frames_source, tuple(results))
