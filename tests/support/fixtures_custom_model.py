"""A tiny custom segmentation model imported by import path in tests/test_models.py."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Two convs; ``output`` picks what forward returns: a tensor, a dict, or (wrongly) a list."""

    def __init__(self, num_classes: int, width: int = 8, output: str = "tensor") -> None:
        super().__init__()
        self.width = width
        self.output = output
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor):
        logits = self.classifier(self.backbone(x))
        if self.output == "dict":
            return {"out": logits, "features": logits.detach()}
        if self.output == "list":
            return [logits]
        return logits


class NanAfter(TinyNet):
    """TinyNet whose output turns NaN from the ``bad_call``-th training forward on (NaN-guard tests).

    It keeps copies of its weights at its first forward and at the bad one, and the latest
    instance is ``NanAfter.last``, so an in-process test can compare them after the run.
    """

    last: NanAfter | None = None

    def __init__(self, num_classes: int, bad_call: int = 3) -> None:
        super().__init__(num_classes)
        self.bad_call = bad_call
        self.calls = 0
        self.initial: dict[str, torch.Tensor] = {}
        self.before_bad: dict[str, torch.Tensor] = {}
        NanAfter.last = self

    def forward(self, x: torch.Tensor):
        if self.training:
            self.calls += 1
            if self.calls in (1, self.bad_call):
                weights = {k: v.detach().clone() for k, v in self.state_dict().items()}
                setattr(self, "initial" if self.calls == 1 else "before_bad", weights)
        logits = super().forward(x)
        if self.training and self.calls >= self.bad_call:
            logits = logits * float("nan")
        return logits


class LinearPixelNet(nn.Module):
    """Per-pixel linear classifier: no BatchNorm, no dropout, so data-parallel splits cannot change its maths."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor):
        return self.classifier(x)


class SignalAt(TinyNet):
    """TinyNet that sends a signal (SIGTERM unless ``signal_name`` says) to its own process at the
    ``call``-th training forward (preemption and Ctrl-C tests)."""

    def __init__(self, num_classes: int, call: int = 6, signal_name: str = "SIGTERM") -> None:
        super().__init__(num_classes)
        self.call = call
        self.signal_name = signal_name
        self.calls = 0

    def forward(self, x: torch.Tensor):
        if self.training:
            self.calls += 1
            if self.calls == self.call:
                import os
                import signal

                os.kill(os.getpid(), getattr(signal, self.signal_name))
        return super().forward(x)


class SignalInValidation(TinyNet):
    """TinyNet that sends SIGTERM to its own process at its first evaluation forward of a run; counts them in ``eval_calls``.

    Forwards on the meta device (the start-up summary counting FLOPs) compute nothing and do not count.
    """

    eval_calls = 0  # on the class: the test reads it after the run

    def forward(self, x: torch.Tensor):
        import signal

        # Only forwards while the run handles SIGTERM count: the pre-flight output check before
        # training runs with the default handler, where a signal would kill the test process.
        handled = signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        if not self.training and x.device.type != "meta" and handled:
            type(self).eval_calls += 1
            if type(self).eval_calls == 1:
                import os

                os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(x)
