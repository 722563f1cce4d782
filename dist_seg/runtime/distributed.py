"""Process group and device setup from the torchrun environment.

The same code path serves ``python -m dist_seg.train`` (one process, no process group)
and ``torchrun --nproc_per_node=N`` (one process per device, ``LOCAL_RANK`` picks it).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..config import BackendConfig
from ..errors import ConfigError, DistSegError, FailedOnAnotherRank

T = TypeVar("T")


@dataclass
class DistContext:
    """Where this process sits in the job and which device it drives."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when no process group is up
    # CPU (gloo) group with a long timeout, for waits that are legitimately slow (cache builds).
    control_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None

    def raise_if_any_failed(self, error: DistSegError | None) -> None:
        """Collective: every rank stops if any rank hit ``error``; rank 0 raises the first one, the others quietly.

        Without it a rank that failed alone leaves its peers at the next collective, where they die
        with a transport traceback that hides the real cause.
        """
        errors = self.gather_objects(error) if self.is_distributed else [error]
        failed = [e for e in errors if e is not None]
        if not failed:
            return
        if self.is_main:
            raise failed[0]
        raise FailedOnAnotherRank(str(failed[0]))

    def fail_together(self, work: Callable[[], T]) -> T:
        """``work()`` on every rank, then :meth:`raise_if_any_failed` with the user error it raised here, if any.

        Every rank calls it at the same point, so work that fails on one rank only (a bad frame
        in its shard) stops all of them there, before a collective the failed rank never reaches.
        """
        result, failure = None, None
        try:
            result = work()
        except DistSegError as exc:
            failure = exc
        self.raise_if_any_failed(failure)
        return result  # type: ignore[return-value]  # set: a failure has raised above

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place and return it (no-op without a process group)."""
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Max of ``tensor`` over ranks in place (no-op without a process group)."""
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        # Over the CPU control group: pickled objects need no trip through GPU memory.
        dist.all_gather_object(out, obj, group=self.control_group)
        return out


class StopVote:
    """Lets ranks agree to stop at the same step without stalling the GPU.

    Each call starts an asynchronous MAX all-reduce of this rank's flag on the CPU
    control group and returns the result of the vote started by the previous call, so
    all ranks stop at the same step, one step after the first of them asked.
    """

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self._pending: tuple[Any, torch.Tensor] | None = None

    def poll(self, local_flag: bool) -> bool:
        """Vote ``local_flag``; True when the previous vote found a rank that wants to stop."""
        if not self.ctx.is_distributed:
            return local_flag
        decided = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            decided = bool(flag.item())
        flag = torch.tensor([int(local_flag)], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.ctx.control_group, async_op=True)
        self._pending = (work, flag)
        return decided

    def drain(self) -> None:
        """Wait for the vote in flight (call on every rank before leaving the loop)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None


def select_device(cfg: BackendConfig, local_rank: int, key: str = "backend.target") -> torch.device:
    """The device this process trains on, per ``backend.target``; errors if it is not there.

    ``key`` is the config key or command-line option (``--device``) that chose the target, for the messages.
    """
    has_gpu = torch.cuda.is_available()
    is_rocm = torch.version.hip is not None
    target = cfg.target
    if target == "auto":
        target = ("rocm" if is_rocm else "cuda") if has_gpu else "cpu"
    if target == "cpu":
        return torch.device("cpu")
    if not has_gpu:
        raise ConfigError(f"{key} {cfg.target!r} asked for a GPU but torch sees none "
                          f"(torch {torch.__version__}); set {key} to cpu or install a GPU build of torch")
    if target == "rocm" and not is_rocm:
        raise ConfigError(f"{key} 'rocm' but this torch is a CUDA build; set {key} to cuda or auto")
    if target == "cuda" and is_rocm:
        raise ConfigError(f"{key} 'cuda' but this torch is a ROCm build; set {key} to rocm or auto")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"LOCAL_RANK {local_rank} has no GPU: only {count} visible; "
                          f"use --nproc_per_node <= {count} or check CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES")
    return torch.device("cuda", local_rank)


def setup_distributed(cfg: BackendConfig, device_key: str = "backend.target") -> DistContext:
    """Read the torchrun environment, pick the device, start the process group if launched by torchrun.

    ``device_key`` names the setting that chose ``cfg.target`` (see :func:`select_device`).
    """
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = select_device(cfg, local_rank, device_key)
    if device.type == "cuda":
        # Before the process group: NCCL and every later allocation bind to this device.
        torch.cuda.set_device(device)
    if not launched:
        return DistContext(0, 0, 1, device, None)
    backend = cfg.dist_backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("backend.dist_backend: 'nccl' needs a GPU; use gloo (or auto) on CPU")
    # The timeout turns a dead peer into an error on the survivors instead of a hang.
    timeout = datetime.timedelta(seconds=collective_timeout_s(cfg, device))
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=cfg.prepare_timeout_s))
    return DistContext(rank, local_rank, world_size, device, backend, control)


def collective_timeout_s(cfg: BackendConfig, device: torch.device) -> float:
    """The process group's timeout: ``dist_timeout_s``, raised to ``compile_timeout_s`` when the model compiles.

    A compiling rank enters its first collective (DDP's first gradient all-reduce) only once its
    compile is done, so the faster ranks wait there for the slowest compile. ``compile: auto``
    compiles on GPUs (see :func:`dist_seg.runtime.device.resolve_runtime`).
    """
    compiles = cfg.compile is True or (cfg.compile == "auto" and device.type == "cuda")
    return max(cfg.dist_timeout_s, cfg.compile_timeout_s) if compiles else cfg.dist_timeout_s


def restart_hazard() -> str | None:
    """Why torchrun's restarts of this job may fail to reconnect, or None when nothing is wrong.

    By default torchrun shares its rendezvous TCP store with the workers and keeps it, without
    a per-attempt prefix, across restarts: a restarted worker group can read the addresses the
    failed group left there, and its process-group setup then fails at random
    (pytorch/pytorch#135712). Only a launch with restarts allowed is at risk.
    """
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if restarts > 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return (f"torchrun may restart the workers (--max-restarts={restarts}) but shares its rendezvous store "
                "with them, so a restarted group can pick up the failed group's addresses and fail to connect "
                "(pytorch/pytorch#135712); use the c10d rendezvous (--standalone or --rdzv-backend=c10d) with "
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 exported, as launch/*.sh do")
    return None


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if one was started."""
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()
