"""Losses: class-balanced cross-entropy, and the recipe losses OHEM cross-entropy, Dice and Lovász-softmax.

Class weights come from the cache manifest's per-class pixel counts of the training
split, so computing them costs nothing at start-up.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import IGNORE_INDEX, LossConfig


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
        else:  # a masked sum, not boolean indexing: no data-dependent shape, so no host sync
            weights = self.weight[target.clamp(max=self.weight.numel() - 1)]
            denom = torch.where(valid, weights, 0.0).sum()
        return per_pixel.sum(), denom


# Recipe losses. All take logits ``[B, C, H, W]`` and int64 targets ``[B, H, W]`` where ``IGNORE_INDEX``
# pixels count nowhere, and compute in float32 (autocast would otherwise run the softmax in
# low precision). :class:`RecipeLoss` combines a cross-entropy term (plain or OHEM) with
# optional Dice / Lovász terms.

class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels only (online hard example mining).

    A labelled pixel is hard when the predicted probability of its true class is below
    ``thresh``. When fewer than ``min_kept`` pixels of the batch are hard, the ``min_kept``
    pixels with the lowest true-class probability are kept instead (all labelled pixels if
    there are fewer), so the loss never averages over a handful of pixels late in training.
    Class weights apply as in the plain loss: a weighted mean over the kept pixels.

    Both choices are computed on the device and one is picked with ``torch.where``: the
    ``min_kept`` lowest-probability candidates come from a ``topk`` of a size fixed by the
    batch shape, so no step reads a count on the host.
    """

    def __init__(self, weight: torch.Tensor | None = None, thresh: float = 0.7, min_kept: int = 100_000) -> None:
        super().__init__()
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"OHEM threshold must be in (0, 1], got {thresh}")
        if min_kept < 0:
            raise ValueError(f"OHEM min_kept must be >= 0, got {min_kept}")
        self.thresh = thresh
        self.min_kept = min_kept
        self.register_buffer("weight", weight, persistent=False)

    @torch.no_grad()
    def kept(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Boolean ``[B, H, W]`` mask of the pixels the loss averages over."""
        valid = target != IGNORE_INDEX
        prob = torch.softmax(logits.float(), dim=1)
        true_prob = prob.gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
        hard = valid & (true_prob < self.thresh)
        k = min(self.min_kept, valid.numel())
        if k == 0:
            return hard
        needed = valid.sum().clamp(max=k)
        # Too few hard pixels: keep the `needed` labelled pixels of lowest true-class probability
        # (ignored pixels score inf, so they rank after every labelled one).
        scores = torch.where(valid, true_prob, torch.full_like(true_prob, float("inf"))).flatten()
        lowest = torch.topk(scores, k, largest=False).indices
        ranks = torch.arange(k, device=scores.device)
        low = torch.zeros_like(scores, dtype=torch.bool).scatter_(0, lowest, ranks < needed).view_as(valid)
        return torch.where(hard.sum() >= needed, hard, low)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = self.kept(logits, target)
        per_pixel = F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=IGNORE_INDEX,
                                    reduction="none")
        if self.weight is None:
            denom = keep.sum()
        else:
            denom = (self.weight[target.clamp(0, self.weight.numel() - 1)] * keep).sum()
        # No kept pixel (an all-ignored batch) gives 0 / 1e-12 = 0, still in every logit's graph.
        return torch.where(keep, per_pixel, 0.0).sum() / denom.clamp(min=1e-12)


def _probs_and_onehot(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``[N, C]``, one-hot labels ``[N, C]`` and the labelled-pixel mask ``[N]`` of every pixel.

    Ignored pixels stay in (an all-zero one-hot row, ``False`` in the mask) and are masked out
    by the callers: selecting the labelled ones would give a data-dependent shape, a host sync.
    """
    c = logits.shape[1]
    prob = torch.softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, c)
    labels = target.reshape(-1)
    # A comparison, not F.one_hot, which checks its input's range on the host; IGNORE_INDEX matches no class.
    onehot = (labels.unsqueeze(1) == torch.arange(c, device=labels.device)).to(prob.dtype)
    return prob, onehot, labels != IGNORE_INDEX


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss, ``1 - mean over classes of (2|P∩G| + s) / (|P| + |G| + s)``.

    A class absent from both prediction and labels scores 1 (thanks to the smoothing), so
    a perfect prediction gives 0.
    """
    prob, onehot, valid = _probs_and_onehot(logits, target)
    inter = (prob * onehot).sum(0)
    total = torch.where(valid.unsqueeze(1), prob, 0.0).sum(0) + onehot.sum(0)
    return 1.0 - ((2 * inter + smooth) / (total + smooth)).mean()


def _lovasz_gradient(sorted_fg: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at foreground labels sorted by error (per column)."""
    fg_total = sorted_fg.sum(0)
    intersection = fg_total - sorted_fg.cumsum(0)
    union = fg_total + (1.0 - sorted_fg).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax loss (Berman et al., CVPR 2018), averaged over the classes present in the labels.

    A convex surrogate of ``1 - IoU`` per class: the pixels' errors ``|fg - p|`` sorted in
    decreasing order, weighted by the Lovász extension's gradient. 0 when every labelled
    pixel gives its class probability 1.

    Every class is computed at once (one sort per column) and the absent ones are weighted 0,
    so nothing is read on the host. Ignored pixels get error -1: they sort after every
    labelled pixel, where they change no prefix sum of the Lovász gradient, and then count 0.
    """
    prob, onehot, valid = _probs_and_onehot(logits, target)
    errors = torch.where(valid.unsqueeze(1), (onehot - prob).abs(), -1.0)
    errors_sorted, order = torch.sort(errors, dim=0, descending=True)
    per_class = (errors_sorted.clamp(min=0.0) * _lovasz_gradient(onehot.gather(0, order))).sum(0)
    present = (onehot.sum(0) > 0).to(per_class.dtype)
    # No labelled pixel: 0 / 1 = 0, still in every logit's graph.
    return (per_class * present).sum() / present.sum().clamp(min=1.0)


class RecipeLoss(nn.Module):
    """``ce + dice_weight * dice + lovasz_weight * lovasz``, where ``ce`` is any cross-entropy module."""

    def __init__(self, ce: nn.Module, dice_weight: float = 0.0, lovasz_weight: float = 0.0) -> None:
        super().__init__()
        if dice_weight < 0 or lovasz_weight < 0:
            raise ValueError(f"loss term weights must be >= 0, got dice {dice_weight}, lovasz {lovasz_weight}")
        self.ce = ce
        self.dice_weight = dice_weight
        self.lovasz_weight = lovasz_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.ce(logits, target)
        if self.dice_weight:
            loss = loss + self.dice_weight * dice_loss(logits, target)
        if self.lovasz_weight:
            loss = loss + self.lovasz_weight * lovasz_softmax(logits, target)
        return loss


def build_criterion(cfg: LossConfig, weight: torch.Tensor | None) -> nn.Module:
    """The training loss of ``training.loss``: class-weighted CE or OHEM, plus the optional Dice / Lovász terms."""
    ce: nn.Module = (OhemCrossEntropy(weight, cfg.ohem_thresh, cfg.ohem_min_kept) if cfg.type == "ohem"
                     else SegmentationLoss(weight))
    if not (cfg.dice_weight or cfg.lovasz_weight):
        return ce
    return RecipeLoss(ce, cfg.dice_weight, cfg.lovasz_weight)
