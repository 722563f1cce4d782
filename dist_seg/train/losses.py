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
        else:
            denom = self.weight[target.clamp(max=self.weight.numel() - 1)][valid].sum()
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
        needed = min(self.min_kept, int(valid.sum()))
        if int(hard.sum()) >= needed:
            return hard
        # Too few hard pixels: keep the `needed` labelled pixels of lowest true-class probability.
        scores = torch.where(valid, true_prob, torch.full_like(true_prob, float("inf"))).flatten()
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.topk(scores, needed, largest=False).indices] = True
        return keep.view_as(valid)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = self.kept(logits, target)
        per_pixel = F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=IGNORE_INDEX,
                                    reduction="none")
        if self.weight is None:
            denom = keep.sum()
        else:
            denom = (self.weight[target.clamp(0, self.weight.numel() - 1)] * keep).sum()
        # No kept pixel (an all-ignored batch): a zero that still reaches every logit's graph.
        return (per_pixel * keep).sum() / denom.clamp(min=1e-12) if keep.any() else logits.sum() * 0.0


def _valid_probs(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``[N, C]`` and labels ``[N]`` of the labelled pixels."""
    c = logits.shape[1]
    prob = torch.softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, c)
    labels = target.reshape(-1)
    valid = labels != IGNORE_INDEX
    return prob[valid], labels[valid]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss, ``1 - mean over classes of (2|P∩G| + s) / (|P| + |G| + s)``.

    A class absent from both prediction and labels scores 1 (thanks to the smoothing), so
    a perfect prediction gives 0.
    """
    prob, labels = _valid_probs(logits, target)
    onehot = F.one_hot(labels, logits.shape[1]).to(prob.dtype)
    inter = (prob * onehot).sum(0)
    total = prob.sum(0) + onehot.sum(0)
    return 1.0 - ((2 * inter + smooth) / (total + smooth)).mean()


def _lovasz_gradient(sorted_fg: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at foreground labels sorted by error."""
    fg_total = sorted_fg.sum()
    intersection = fg_total - sorted_fg.cumsum(0)
    union = fg_total + (1.0 - sorted_fg).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax loss (Berman et al., CVPR 2018), averaged over the classes present in the labels.

    A convex surrogate of ``1 - IoU`` per class: the pixels' errors ``|fg - p|`` sorted in
    decreasing order, weighted by the Lovász extension's gradient. 0 when every labelled
    pixel gives its class probability 1.
    """
    prob, labels = _valid_probs(logits, target)
    losses = []
    for c in labels.unique().tolist():
        fg = (labels == c).to(prob.dtype)
        errors = (fg - prob[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_gradient(fg[order])))
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()


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
