"""Learning-rate schedule per optimizer step: linear warmup, then poly / cosine / constant.

The train step sets each parameter group's LR to ``learning_rate * lr_factor(step)`` before
every update, so the schedule has no state of its own: the step count is the position.
"""

from __future__ import annotations

import math

from ..config import TrainingConfig


def lr_factor(step: int, total_steps: int, cfg: TrainingConfig) -> float:
    """Multiplier on ``learning_rate`` after ``step`` optimizer steps."""
    if cfg.warmup_iters and step < cfg.warmup_iters:
        return (step + 1) / cfg.warmup_iters
    floor = cfg.min_lr / cfg.learning_rate
    span = max(1, total_steps - cfg.warmup_iters)
    progress = min(1.0, (step - cfg.warmup_iters) / span)
    if cfg.lr_schedule == "poly":
        decay = (1.0 - progress) ** cfg.poly_power
    elif cfg.lr_schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0
    return floor + (1.0 - floor) * decay

