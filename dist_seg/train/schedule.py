"""Learning-rate schedule per optimizer step: linear warmup, then poly / cosine / step / constant.

The train step sets each parameter group's LR to ``learning_rate * lr_factor(step)`` before
every update, so the schedule has no state of its own: the step count is the position.

The warm-up lasts ``training.warmup_iters`` steps, but at most :data:`MAX_WARMUP_SHARE` of the
run's steps: a fixed 50-step warm-up would leave a 15-step fine-tune below its learning rate
throughout, and a 62-step cosine run decaying in only 12 steps. :func:`warmup_steps` gives the
steps actually used and :func:`warmup_note` the log line saying when the cap applied.
"""

from __future__ import annotations

import math

from ..config import TrainingConfig

#: Largest share of the run's optimizer steps the warm-up may take.
MAX_WARMUP_SHARE = 0.25


def warmup_steps(total_steps: int, cfg: TrainingConfig) -> int:
    """Steps of linear warm-up: ``warmup_iters``, at most a quarter of ``total_steps`` (0 stays 0)."""
    if not cfg.warmup_iters:
        return 0
    return max(1, min(cfg.warmup_iters, int(total_steps * MAX_WARMUP_SHARE)))


def warmup_note(total_steps: int, cfg: TrainingConfig) -> str | None:
    """The log line when the warm-up was shortened to fit the run, else None."""
    used = warmup_steps(total_steps, cfg)
    if used == cfg.warmup_iters:
        return None
    return (f"warm-up capped: training.warmup_iters {cfg.warmup_iters} is more than {MAX_WARMUP_SHARE:.0%} of this "
            f"run's {total_steps} optimizer steps, so the learning rate warms up over {used} step{'s' * (used != 1)}")


def lr_factor(step: int, total_steps: int, cfg: TrainingConfig) -> float:
    """Multiplier on ``learning_rate`` after ``step`` optimizer steps of ``total_steps`` (``training.epochs`` long)."""
    warmup = warmup_steps(total_steps, cfg)
    if warmup and step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr / cfg.learning_rate
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if cfg.lr_schedule == "poly":
        decay = (1.0 - progress) ** cfg.poly_power
    elif cfg.lr_schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.lr_schedule == "step":
        # Milestones are epochs: the factor drops once the step count reaches each epoch's first step.
        steps_per_epoch = total_steps / cfg.epochs
        decay = cfg.lr_gamma ** sum(step >= round(m * steps_per_epoch) for m in cfg.lr_milestones)
    else:
        decay = 1.0
    return floor + (1.0 - floor) * decay
