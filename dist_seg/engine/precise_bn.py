"""BatchNorm statistics that hold in eval mode: "precise BN" re-estimation and an eval/train gap check.

A BatchNorm layer's running statistics are an exponential average with a small momentum
(torchvision's MobileNetV3 uses 0.01): after a short run from scratch they still describe
the early, very different activations, and eval-mode outputs are poor although the
weights are fine. :func:`recompute_bn_stats` replaces them with the plain average over a
number of training batches at the current weights (momentum ``None`` makes PyTorch keep a
cumulative average). :func:`bn_eval_train_gap` measures how far eval-mode predictions are
from batch-statistics predictions, so the trainer can warn when they disagree badly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from ..config import IGNORE_INDEX
from ..models.batchnorm import batch_norms, batch_statistics

# Below this eval/train argmax agreement the trainer should warn.
BN_GAP_WARN_AGREEMENT = 0.8


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int,
                       reduce_mean: Callable[[torch.Tensor], None] | None = None) -> int:
    """Re-estimate every BatchNorm's running mean / variance over up to ``num_batches`` input batches.

    ``batches`` yields model inputs ready for the forward pass (on the device, normalised).
    Each batch counts equally, so the result is the dataset average when batches have one
    size. ``reduce_mean`` (e.g. an all-reduce divided by the world size) averages the new
    statistics across ranks so every replica keeps identical buffers. Weights, momenta and
    the model's train/eval mode are restored; returns the number of batches used. Dropout
    and other layers run in eval mode.
    """
    layers = batch_norms(model)
    if not layers or num_batches <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches that follow
    # Only the BatchNorm layers train: dropout stays off, so the pass draws no random numbers
    # and a resumed run's random streams match an uninterrupted one's.
    model.eval()
    for m in layers:
        m.train()
    used = 0
    try:
        for x in batches:
            if used >= num_batches:
                break
            model(x)
            used += 1
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    if reduce_mean is not None:
        for m in layers:
            reduce_mean(m.running_mean)
            reduce_mean(m.running_var)
    return used


@dataclass(frozen=True)
class BnGap:
    """Eval-mode vs batch-statistics predictions on one batch."""

    agreement: float  # fraction of pixels where both argmaxes agree
    eval_pixel_acc: float | None  # with labels: accuracy in eval mode
    train_pixel_acc: float | None  # with labels: accuracy with batch statistics

    @property
    def bad(self) -> bool:
        return self.agreement < BN_GAP_WARN_AGREEMENT

    def describe(self) -> str:
        text = f"eval-mode and batch-statistics predictions agree on {self.agreement:.0%} of pixels"
        if self.eval_pixel_acc is not None:
            text += f" (pixel accuracy {self.eval_pixel_acc:.2f} eval vs {self.train_pixel_acc:.2f} batch stats)"
        return text


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


@torch.no_grad()
def bn_eval_train_gap(model: nn.Module, batch: torch.Tensor, target: torch.Tensor | None = None) -> BnGap:
    """Compare predictions with running statistics (eval) and with ``batch``'s own statistics.

    Only the BatchNorm layers switch to training mode for the second pass (dropout stays
    off, so any difference comes from the statistics), and their running statistics are
    restored afterwards: the check changes nothing. ``target`` (``[B, H, W]``, ``IGNORE_INDEX``
    ignored) adds both pixel accuracies.
    """
    was_training = model.training
    model.eval()
    try:
        eval_pred = _logits(model, batch).argmax(1)
        with batch_statistics(model):
            train_pred = _logits(model, batch).argmax(1)
    finally:
        model.train(was_training)
    agreement = (eval_pred == train_pred).float().mean().item()
    if target is None:
        return BnGap(agreement, None, None)
    valid = target != IGNORE_INDEX
    count = max(int(valid.sum()), 1)
    return BnGap(agreement, ((eval_pred == target) & valid).sum().item() / count,
                 ((train_pred == target) & valid).sum().item() / count)
