"""Temporal consistency of predictions on video: VC_n and the flicker rate, streamed frame by frame.

Frames must be fed in temporal order, one sequence after the other (dist_seg's order is
the sorted file order inside a sequence folder). Pixels whose ground truth is
``IGNORE_INDEX`` (unknown colours, the void class when it is ignored) count nowhere.

**VC_n** (video consistency, Miao et al., CVPR 2021, VSPW). For every window of n
consecutive frames of a sequence, take the pixels whose ground-truth label is the same
(and not ignored) in all n frames; the window's score is the share of them whose
predicted label is also the same in all n frames. A sequence's VC_n is the mean over
its windows (windows with no such pixel are skipped); the overall VC_n is the mean over
the sequences that have at least one scored window. VC_2 is the per-pair rate.

**Flicker rate**. Among the pixels whose ground-truth label is equal (and not ignored)
in frames t-1 and t, the share whose prediction changes between t-1 and t; per sequence
and overall, pooled over all such pixels (not a mean of per-sequence rates).

Memory stays bounded by two frames whatever n is: each pixel keeps the length of the
run of frames, ending at the current one, over which its label stayed constant, and the
same for the prediction; a window of n frames ending now is constant iff the run is at
least n long.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from ..config import IGNORE_INDEX

WINDOW_SIZES = (2, 8, 16)


@dataclass
class SequenceVideoMetrics:
    """Temporal metrics of one sequence (NaN where nothing could be scored)."""

    frames: int
    vc: dict[int, float]  # n -> VC_n (mean over scored windows)
    vc_windows: dict[int, int]  # n -> windows with at least one static-label pixel
    flicker: float
    static_pixels: int  # pixel pairs (t-1, t) with an unchanged, non-ignored label
    flickering_pixels: int  # ... of which the prediction changed


@dataclass
class VideoMetrics:
    """Temporal metrics over a set of sequences."""

    window_sizes: tuple[int, ...]
    sequences: dict[str, SequenceVideoMetrics] = field(default_factory=dict)

    @property
    def vc(self) -> dict[int, float]:
        """n -> mean VC_n over the sequences that have a scored window."""
        out = {}
        for n in self.window_sizes:
            values = [s.vc[n] for s in self.sequences.values() if s.vc_windows[n] > 0]
            out[n] = sum(values) / len(values) if values else math.nan
        return out

    @property
    def flicker(self) -> float:
        """Pooled flicker rate: flickering pixels / static-label pixels over every sequence."""
        static = sum(s.static_pixels for s in self.sequences.values())
        changed = sum(s.flickering_pixels for s in self.sequences.values())
        return changed / static if static else math.nan


# Per-sequence totals, in this order, as one row of a float64 tensor (all-reduced over ranks).
def _fields(window_sizes: Sequence[int]) -> int:
    return 3 + 2 * len(window_sizes)  # frames, static, changed, then (ratio sum, windows) per n


class VideoMetricsAccumulator:
    """Streams frames in order and accumulates VC_n and flicker counts per sequence, on the device.

    ``update(pred, target, keys)`` takes a batch of frames; ``keys`` names each frame's
    sequence (any hashable, e.g. its folder). A new key starts a new sequence. Nothing is
    copied to the host until :meth:`totals` or :meth:`result`, so no step waits on the device.
    ``window_sizes=()`` computes only the flicker rate (cheap enough for every validation).
    """

    def __init__(self, window_sizes: Sequence[int] = WINDOW_SIZES, device: torch.device | str = "cpu",
                 sequence_names: Sequence[Hashable] = ()) -> None:
        if any(n < 2 for n in window_sizes):
            raise ValueError(f"window sizes must be >= 2, got {list(window_sizes)}")
        self.window_sizes = tuple(window_sizes)
        self.device = torch.device(device)
        # Naming every sequence up front gives every rank the same rows, so totals can be all-reduced;
        # other keys get rows as they come.
        self.names: list[Hashable] = []
        self.index: dict[Hashable, int] = {}
        self._totals = torch.zeros(0, _fields(self.window_sizes), dtype=torch.float64, device=self.device)
        for name in sequence_names:
            self._row(name)
        self._current: int | None = None
        self._prev_target: torch.Tensor | None = None
        self._prev_pred: torch.Tensor | None = None
        self._target_run: torch.Tensor | None = None
        self._joint_run: torch.Tensor | None = None
        # Runs only ever need to reach the longest window.
        self._cap = max(self.window_sizes, default=2)

    def update(self, pred: torch.Tensor, target: torch.Tensor, keys: Sequence[Hashable]) -> None:
        """Add frames ``[B, H, W]`` (predicted ids, label ids with ``IGNORE_INDEX``) in temporal order."""
        for i, key in enumerate(keys):
            self._add(pred[i], target[i], self._row(key))

    def _row(self, key: Hashable) -> int:
        if key not in self.index:
            self.index[key] = len(self.names)
            self.names.append(key)
            self._totals = torch.cat([self._totals, self._totals.new_zeros(1, self._totals.shape[1])])
        return self.index[key]

    def _add(self, pred: torch.Tensor, target: torch.Tensor, seq: int) -> None:
        row = self._totals[seq]
        valid = target != IGNORE_INDEX
        continues = (self._current == seq and self._prev_target is not None
                     and self._prev_target.shape == target.shape)
        if continues:
            same_target = valid & (target == self._prev_target)
            kept = same_target & (pred == self._prev_pred)
            static = same_target.sum()
            row[1] += static
            row[2] += static - kept.sum()
        if self.window_sizes:  # flicker alone needs no runs
            self._update_runs(row, valid, same_target if continues else None, kept if continues else None)
        row[0] += 1
        self._current = seq
        self._prev_target, self._prev_pred = target, pred

    def _update_runs(self, row: torch.Tensor, valid: torch.Tensor, same_target: torch.Tensor | None,
                     kept: torch.Tensor | None) -> None:
        """Extend (or restart) the runs of "label constant" and "label and prediction constant", then score windows."""
        start = valid.to(torch.int16)
        if same_target is None:  # first frame of a sequence
            self._target_run, self._joint_run = start, start.clone()
            return
        self._target_run = torch.where(same_target, (self._target_run + 1).clamp_(max=self._cap), start)
        self._joint_run = torch.where(kept, (self._joint_run + 1).clamp_(max=self._cap), start)
        for k, n in enumerate(self.window_sizes):
            label_static = (self._target_run >= n).sum()
            consistent = (self._joint_run >= n).sum()
            scored = label_static > 0
            row[3 + 2 * k] += torch.where(scored, consistent / label_static.clamp(min=1), 0.0)
            row[4 + 2 * k] += scored

    def totals(self) -> torch.Tensor:
        """The ``[sequences, fields]`` float64 counts; sum them over ranks with an all-reduce."""
        return self._totals

    def flicker_counts(self) -> torch.Tensor:
        """``[static-label pixels, flickering pixels]`` over every sequence seen (float64, for an all-reduce)."""
        return self._totals[:, 1:3].sum(0)

    def result(self, totals: torch.Tensor | None = None) -> VideoMetrics:
        """Metrics from ``totals`` (default: this accumulator's own, i.e. not reduced over ranks)."""
        rows = (self._totals if totals is None else totals).cpu().tolist()
        metrics = VideoMetrics(self.window_sizes)
        for name, row in zip(self.names, rows, strict=False):
            frames, static, changed = int(row[0]), int(row[1]), int(row[2])
            if frames == 0:
                continue
            vc, windows = {}, {}
            for k, n in enumerate(self.window_sizes):
                windows[n] = int(row[4 + 2 * k])
                vc[n] = row[3 + 2 * k] / windows[n] if windows[n] else math.nan
            metrics.sequences[str(name)] = SequenceVideoMetrics(
                frames, vc, windows, changed / static if static else math.nan, static, changed)
        return metrics
