"""Class-balanced cross-entropy.

Class weights come from the cache manifest's per-class pixel counts of the training
split, so computing them costs nothing at start-up.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import IGNORE_INDEX


def class_weights(pixel_counts: np.ndarray, method: str, void_index: int | None = None) -> torch.Tensor | None:
    """Per-class loss weights from pixel counts, or None for ``method == "none"``.

    Weights are scaled so that the average weight per labelled pixel is 1, which keeps
    the loss on the same scale as unweighted cross-entropy. Classes with no pixels
    (and the void class) get weight 0: they never appear as targets anyway.
    """
    if method == "none":
        return None
    counts = np.asarray(pixel_counts, dtype=np.float64).copy()
    if void_index is not None:
        counts[void_index] = 0.0
    present = counts > 0
    if not present.any():
        return None
    freq = np.where(present, counts / counts.sum(), 0.0)
    raw = np.zeros_like(freq)
    if method == "inverse":
        raw[present] = 1.0 / freq[present]
    elif method == "inverse_sqrt":
        raw[present] = 1.0 / np.sqrt(freq[present])
    elif method == "median_frequency":
        raw[present] = np.median(freq[present]) / freq[present]
    else:
        raise ValueError(f"unknown class weighting {method!r}")
    raw /= (raw * freq).sum()
    return torch.tensor(raw, dtype=torch.float32)


class SegmentationLoss(torch.nn.Module):
    """Weighted cross-entropy over labelled pixels; ``IGNORE_INDEX`` pixels count nowhere."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Loss in float32: autocast would otherwise run the log-softmax in low precision.
        return F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=IGNORE_INDEX)

    def sum_and_weight(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed weighted loss and summed weight over labelled pixels, for exact averages across batches and ranks."""
        per_pixel = F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=IGNORE_INDEX,
                                    reduction="none")
        valid = target != IGNORE_INDEX
        if self.weight is None:
            denom = valid.sum().to(per_pixel.dtype)
        else:
            denom = self.weight[target.clamp(max=self.weight.numel() - 1)][valid].sum()
        return per_pixel.sum(), denom
