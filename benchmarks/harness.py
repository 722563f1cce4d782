"""A training step of the real model, without data loading: what the step and vram suites time.

The step is the product's own :class:`dist_seg.train.step.TrainStep` (forward under autocast,
float32 class-balanced loss, scaled backward, fused AdamW step), built the way the trainer
builds it. The batch is a fixed random tensor already on the device, so only the model and
optimizer are timed.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from dist_seg.config import DAVID_CLASSES, BackendConfig, ModelConfig, TrainingConfig
from dist_seg.models import build_model
from dist_seg.runtime.device import resolve_runtime
from dist_seg.train.losses import SegmentationLoss
from dist_seg.train.step import TrainStep, build_optimizer

from .common import synchronize
from .sizes import ModelSpec


@dataclass(frozen=True)
class StepVariant:
    """One combination of the throughput switches the trainer has (``backend.*``)."""

    name: str
    channels_last: bool = False
    amp_dtype: torch.dtype | None = None  # None = float32
    compile: bool = False

    def settings(self) -> dict:
        dtype = "float32" if self.amp_dtype is None else f"autocast {str(self.amp_dtype).removeprefix('torch.')}"
        return {"channels_last": self.channels_last, "precision": dtype, "compile": self.compile}


class StepHarness:
    """Model, optimizer and one synthetic batch on ``device``, stepped by the trainer's :class:`TrainStep`."""

    def __init__(self, spec: ModelSpec, variant: StepVariant, device: torch.device, seed: int = 0,
                 model_cfg: ModelConfig | None = None) -> None:
        """``model_cfg`` builds another network (a zoo pair) at ``spec``'s size and batch; default DeepLabV3+."""
        self.spec, self.variant, self.device = spec, variant, device
        # The trainer's process-wide switches for this device (on a GPU: cuDNN benchmark, TF32 for fp32 math).
        resolve_runtime(BackendConfig(), device, log=lambda _message: None)
        num_classes = len(DAVID_CLASSES)
        torch.manual_seed(seed)
        layout = torch.channels_last if variant.channels_last else torch.contiguous_format
        model = build_model(model_cfg or ModelConfig(backbone=spec.backbone), num_classes)
        model = model.to(device, memory_format=layout)
        model.train()
        self.eager_model = model
        amp = variant.amp_dtype

        def autocast() -> contextlib.AbstractContextManager:
            return contextlib.nullcontext() if amp is None else torch.autocast(device.type, dtype=amp)

        # The trainer's optimizer settings at their defaults (AdamW, learning rate and weight decay 1e-4).
        optimizer = build_optimizer(model.parameters(), TrainingConfig(output_dir="unused"))
        self.train_step = TrainStep(torch.compile(model) if variant.compile else model, SegmentationLoss().to(device),
                                    optimizer, torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
                                    autocast)
        self.criterion = self.train_step.criterion
        self.steps = 0
        height, width = spec.image_size
        self.x = torch.randn(spec.batch_size, 3, height, width, device=device).contiguous(memory_format=layout)
        self.y = torch.randint(0, num_classes, (spec.batch_size, height, width), device=device)

    def step(self) -> None:
        self.steps += 1
        self.train_step(self.x, self.y, step=self.steps)

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` back-to-back steps, from a synchronised start to a synchronised end."""
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return time.perf_counter() - start

    def phase_times(self, steps: int) -> dict[str, list[float]]:
        """Milliseconds of forward(+loss), backward and optimizer per step.

        The device is synchronised around every phase, which costs the overlap a free-running
        loop has: use these for the split, :meth:`run` for throughput.
        """
        times: dict[str, list[float]] = {"forward_ms": [], "backward_ms": [], "optimizer_ms": []}
        for _ in range(steps):
            synchronize(self.device)
            t0 = time.perf_counter()
            loss = self.train_step.forward(self.x, self.y)
            synchronize(self.device)
            t1 = time.perf_counter()
            self.steps += 1
            self.train_step.backward(loss, self.steps)
            synchronize(self.device)
            t2 = time.perf_counter()
            self.train_step.optimizer_step()
            synchronize(self.device)
            t3 = time.perf_counter()
            times["forward_ms"].append(1e3 * (t1 - t0))
            times["backward_ms"].append(1e3 * (t2 - t1))
            times["optimizer_ms"].append(1e3 * (t3 - t2))
        return times

    def flops_per_image(self) -> float:
        """FLOPs of one forward + backward per image, counted by ``FlopCounterMode`` on the eager model.

        Counts matmuls and convolutions (what dominates); elementwise work is not counted.
        The gradients it leaves are dropped so the next step starts clean.
        """
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            logits = self.eager_model(self.x)["out"]
            self.criterion(logits, self.y).backward()
        self.train_step.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops() / self.spec.batch_size


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> list[float]:
    """Achieved TFLOP/s of an ``n x n`` by ``n x n`` matmul in ``dtype``, one value per repeat.

    The card's (or CPU's) practical peak for dense math, against which a model's achieved
    FLOP rate is judged; each repeat runs enough multiplications to last ~0.2 s.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flops = 2.0 * n**3
    torch.matmul(a, b)  # warm-up: library initialisation and kernel selection
    synchronize(device)
    start = time.perf_counter()
    torch.matmul(a, b)
    synchronize(device)
    iterations = max(1, int(0.2 / max(time.perf_counter() - start, 1e-6)))
    results = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iterations):
            torch.matmul(a, b)
        synchronize(device)
        results.append(flops * iterations / (time.perf_counter() - start) / 1e12)
    return results
