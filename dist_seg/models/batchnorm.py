"""BatchNorm layers as training sees them: batch statistics, and the batch size they need.

A BatchNorm layer in training mode normalises with its batch's statistics, and a layer that
sees a single value per channel (a batch of one sample after global pooling, as in ASPP's
image-pooling branch) cannot: PyTorch raises "Expected more than 1 value per channel when
training". :func:`batch_statistics` runs passes the way a training step does without
changing the model, so a pre-flight pass finds that before any data is prepared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError

# What torch.nn.functional.batch_norm says when a layer gets one value per channel in training mode.
_ONE_VALUE_MESSAGE = "Expected more than 1 value per channel when training"


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, only the BatchNorm layers are in training mode (batch statistics, as in a training step).

    Dropout and every other layer stay in eval mode, so the passes inside draw no random
    numbers; the running statistics and the model's mode are restored on exit, so the
    passes change nothing.
    """
    layers = batch_norms(model)
    was_training = model.training
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    model.eval()
    for m in layers:
        m.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(layers, saved, strict=False):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        model.train(was_training)


def _batch_size_error(batch_size: int, model_name: str) -> ConfigError:
    """The error for a per-rank batch too small for the model's BatchNorm in training mode."""
    return ConfigError(f"training.batch_size: {batch_size} cannot train {model_name}: its BatchNorm needs at least "
                       "2 samples per rank in training mode (a layer after global pooling sees one value per "
                       "channel); use training.batch_size >= 2")


@contextlib.contextmanager
def one_sample_mode(model: nn.Module, batch_size: int, model_name: str) -> Iterator[nn.Module]:
    """The mode for a pre-flight pass of one sample that fails wherever training with ``batch_size`` would.

    With a per-rank batch of one, BatchNorm uses batch statistics (:func:`batch_statistics`),
    as in a training step, and a layer that then sees one value per channel raises the
    ConfigError naming ``training.batch_size`` and ``model_name``; otherwise eval mode (a
    larger batch always gives BatchNorm more than one value). The model's mode and
    statistics are restored on exit.
    """
    if batch_size == 1:
        with batch_statistics(model):
            try:
                yield model
            except ValueError as exc:
                if _ONE_VALUE_MESSAGE in str(exc):
                    raise _batch_size_error(batch_size, model_name) from exc
                raise
        return
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
