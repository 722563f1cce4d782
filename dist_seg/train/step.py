"""The training step: what the trainer runs per micro-batch and what ``benchmarks/`` times.

A non-finite loss must never reach the weights, and a GPU must not wait for the host to check
every step. So the step records on the device the first optimizer step whose loss was not
finite and from then on multiplies every backward by NaN: each later update is then skipped on
the device by a found-inf flag (the GradScaler's under float16, else one from the gradient norm)
that the fused optimizers honour. Gradients are all-reduced before that check, so all ranks skip
the same updates. The loop reads the record at its next log window and stops the run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint_file import unwrap_model
from ..config import TrainingConfig
from ..errors import DistSegError
from ..runtime.distributed import DistContext
from ..runtime.memory import memory_needed_by
from .ema import ModelEma


class NonFiniteLossError(DistSegError):
    """Training produced a NaN/inf loss; continuing would only train on garbage."""


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW or SGD per ``training.optimizer``; fused, because the fused kernels take the device-side skip flag."""
    trainable = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=cfg.learning_rate, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)


class TrainStep:
    """Model, loss, optimizer and scaler stepped as one unit; call it once per micro-batch."""

    def __init__(self, model: torch.nn.Module, criterion: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, autocast: Callable[[], contextlib.AbstractContextManager],
                 grad_clip_norm: float | None = None, ema: ModelEma | None = None,
                 out_of_memory: tuple[str, str] | None = None) -> None:
        self.model = model
        # (what, fix): running out of memory in a step is then a ConfigError naming the setting to lower.
        self.out_of_memory = out_of_memory
        self.ema = ema  # updated after every optimizer step that changed the weights
        self.criterion = criterion
        self.optimizer = optimizer
        self.scaler = scaler
        self.autocast = autocast
        self.grad_clip_norm = grad_clip_norm
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        # -1 while every loss was finite; the optimizer step (1-based) of the first bad one after that.
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=self.params[0].device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, step: int, accum: int = 1, last_micro: bool = True,
                 lr_factor: float = 1.0) -> torch.Tensor:
        """Train on one micro-batch of optimizer step ``step``; returns its detached loss (no host sync)."""
        guard = (memory_needed_by(self.out_of_memory[0], x.device, self.out_of_memory[1])
                 if self.out_of_memory is not None else contextlib.nullcontext())
        with guard:
            loss = self.forward(x, y, sync=last_micro)
            self.backward(loss, step, accum)
            if last_micro:
                self.optimizer_step(lr_factor)
        return loss.detach()

    def forward(self, x: torch.Tensor, y: torch.Tensor, sync: bool = True) -> torch.Tensor:
        """Loss of one micro-batch; ``sync=False`` skips DDP's gradient all-reduce (accumulation micro-steps)."""
        no_sync = (self.model.no_sync() if not sync and isinstance(self.model, DistributedDataParallel)
                   else contextlib.nullcontext())
        with no_sync, self.autocast():
            logits = self.model(x)["out"]
        return self.criterion(logits, y)

    def backward(self, loss: torch.Tensor, step: int, accum: int = 1) -> None:
        """Scaled backward of ``loss / accum``; a non-finite ``loss`` marks optimizer step ``step`` bad."""
        bad = self.first_bad_step
        bad.copy_(torch.where((bad < 0) & ~torch.isfinite(loss.detach()), step, bad))
        poison = torch.where(bad < 0, 1.0, float("nan"))
        self.scaler.scale(loss * poison / accum).backward()

    def optimizer_step(self, lr_factor: float = 1.0) -> None:
        """Set the LR, unscale and clip, update unless a gradient is non-finite, reset the gradients."""
        optimizer = self.optimizer
        for group, base_lr in zip(optimizer.param_groups, self.base_lrs, strict=False):
            group["lr"] = base_lr * lr_factor
        with_grad = [p for p in self.params if p.grad is not None]
        norm = None
        if self.scaler.is_enabled():
            if self.grad_clip_norm is not None or self.ema is not None:
                self.scaler.unscale_(optimizer)
                norm = (torch.nn.utils.clip_grad_norm_(with_grad, self.grad_clip_norm) if self.grad_clip_norm
                        is not None else torch.nn.utils.get_total_norm([p.grad for p in with_grad]))
            self.scaler.step(optimizer)  # the scaler's found-inf flag goes to the fused kernel
            self.scaler.update()
        else:
            if self.grad_clip_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(with_grad, self.grad_clip_norm)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in with_grad])
            # The attribute is the contract between GradScaler and the fused optimizers; we fill it ourselves.
            optimizer.found_inf = (~torch.isfinite(norm)).float()
            try:
                optimizer.step()
            finally:
                del optimizer.found_inf
        if self.ema is not None:
            # A step skipped for a non-finite gradient left the weights as they were: the average too.
            self.ema.update(unwrap_model(self.model), applied=torch.isfinite(norm).float())
        optimizer.zero_grad(set_to_none=True)

    def raise_if_nonfinite(self, ctx: DistContext, where: str) -> None:
        """Stop if any rank saw a non-finite loss (a host sync: call it at log points, on every rank)."""
        flag = ctx.all_reduce_max(self.first_bad_step.clone())
        bad_step = int(flag.item())
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"non-finite training loss at optimizer step {bad_step} ({where}); the update was skipped and "
                "the run stopped without saving. Lower training.learning_rate, set training.grad_clip_norm, try "
                "backend.amp_dtype: bfloat16, or check the data with python -m dist_seg.validate")
