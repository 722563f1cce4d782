"""Exponential moving average (EMA) of a model's weights, for validation, best-model choice and export.

After every optimizer step ``ema = d * ema + (1 - d) * weights`` for every floating-point
parameter; buffers (BatchNorm running statistics, counters) are copied, since averaging
statistics that the live model already averages only delays them. With warm-up the decay
of update ``n`` (0-based) is ``min(decay, (1 + n) / (10 + n))``, so early averages are not
dominated by the random initialisation.

The EMA lives on the same device as the model, holds an unwrapped copy (pass the model
without DDP / ``torch.compile`` wrappers, so keys match the checkpoint's), and its
``state_dict()`` / ``load_state_dict()`` restore it exactly on resume.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class ModelEma:
    """An averaged copy of ``model`` (``.module``, always in eval mode, no gradients)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self._param_names = frozenset(name for name, _ in model.named_parameters())
        self._source: nn.Module | None = None
        self._pairs: tuple[list[torch.Tensor], ...] = ()

    def current_decay(self) -> float:
        """The decay the next :meth:`update` applies."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module, applied: torch.Tensor | None = None) -> None:
        """Fold the current weights of ``model`` (same architecture, unwrapped) into the average.

        ``applied`` (a device scalar, 1.0 or 0.0) says whether the optimizer step really
        updated the weights: 0.0 leaves the averaged weights unchanged without a host sync.
        """
        d = self.current_decay()
        ema_params, live_params, ema_other, live_other = self._tensor_lists(model)
        if ema_params:
            if applied is None:
                torch._foreach_lerp_(ema_params, live_params, 1.0 - d)
            else:
                weight = (applied * (1.0 - d)).to(ema_params[0].dtype)
                torch._foreach_lerp_(ema_params, live_params, [weight] * len(ema_params))
        if ema_other:
            torch._foreach_copy_(ema_other, live_other)
        self.updates += 1

    def _tensor_lists(self, model: nn.Module) -> tuple[list[torch.Tensor], ...]:
        """(averaged, live) floating-point parameters and (copied, live) other state, built once per model.

        The optimizer and ``load_state_dict`` update tensors in place, so the lists stay valid and
        a step costs two fused kernels, not a fresh ``state_dict()`` and one kernel per tensor.
        """
        if model is not self._source:
            live = {name: value.detach() for name, value in model.state_dict().items()}
            pairs: tuple[list[torch.Tensor], ...] = ([], [], [], [])
            for name, ema_value in self.module.state_dict().items():
                if live[name].dtype != ema_value.dtype:
                    raise ValueError(f"EMA: {name} is {live[name].dtype} in the model but {ema_value.dtype} in the "
                                     "average; build the ModelEma from the model as it trains")
                averaged = name in self._param_names and ema_value.is_floating_point()
                pairs[0 if averaged else 2].append(ema_value)
                pairs[1 if averaged else 3].append(live[name])
            self._source, self._pairs = model, pairs
        return self._pairs

    def state_dict(self) -> dict[str, Any]:
        """Weights, update count and settings: everything an exact resume needs."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the decay settings come from the current config)."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


@contextlib.contextmanager
def ema_weights(model: nn.Module, ema: ModelEma) -> Iterator[nn.Module]:
    """Temporarily load the EMA weights into ``model`` (e.g. a compiled or DDP-wrapped model's inner module).

    Evaluating through the live model reuses its compiled graph and device placement; its
    own weights are restored on exit, even after an exception.
    """
    saved = {name: value.detach().clone() for name, value in model.state_dict().items()}
    model.load_state_dict(ema.module.state_dict())
    try:
        yield model
    finally:
        model.load_state_dict(saved)
