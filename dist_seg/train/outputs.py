"""Everything a run leaves behind that only rank 0 writes, in one place.

Other ranks hold the same object with ``active=False``; every method decorated with
``@_main_rank_only`` is then a no-op, so the training loop never branches on the rank.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml
from PIL import Image

from .. import atomic
from ..checkpoint_file import checkpoint_name, list_checkpoints, mirror_best, save_checkpoint
from ..config import Config, config_to_dict, save_config
from ..eval.native import NativeEvalResult
from ..eval.report import write_report
from ..telemetry.history import EpochRecord, History
from ..telemetry.tensorboard import RunWriter

F = TypeVar("F", bound=Callable[..., Any])


def _main_rank_only(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: RunOutputs, *args: Any, **kwargs: Any) -> Any:
        if self.active:
            return method(self, *args, **kwargs)
        return None

    return wrapper  # type: ignore[return-value]


class RunOutputs:
    """Output directory, history, checkpoints, TensorBoard and console of one run."""

    def __init__(self, cfg: Config, active: bool) -> None:
        self.cfg = cfg
        self.active = active
        self.dir = Path(cfg.training.output_dir)
        self.checkpoint_dir = self.dir / "checkpoints"
        self.best_path = self.dir / "best_model.pth"
        self.history = History(self.dir / "history.json") if active else None
        self.writer: RunWriter | None = None

    @_main_rank_only
    def start(self, class_names: list[str], world_size: int) -> None:
        """Create the output directory, write the resolved config, open TensorBoard."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temporaries()
        save_config(self.cfg, self.dir / "config.yaml")
        if self.cfg.telemetry.tensorboard:
            self.writer = RunWriter(self.dir / "tensorboard")
            self.writer.config_text(yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False))
            self.writer.custom_scalars_layout(class_names, world_size)

    @_main_rank_only
    def purge_tensorboard_from(self, step: int) -> None:
        """After a resume: reopen TensorBoard so that the points an earlier run wrote at ``step`` and later are hidden."""
        if self.writer is not None:
            self.writer.close()
            self.writer = RunWriter(self.dir / "tensorboard", purge_step=step)

    @_main_rank_only
    def log(self, message: str) -> None:
        print(message, flush=True)

    @_main_rank_only
    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _tensorboard(self) -> Iterator[RunWriter | None]:
        """The TensorBoard writer for one write (None when off or given up).

        TensorBoard is a view of the run, not the run: a write that fails (a full disk: the
        event writer's thread raises at the next write) ends TensorBoard output with one warning
        instead of ending the training; the checkpoints check their own free space.
        """
        try:
            yield self.writer
        except OSError as exc:
            writer, self.writer = self.writer, None
            self.warn(f"cannot write TensorBoard events to {self.dir / 'tensorboard'} ({exc}): TensorBoard output "
                      "stops here, training and checkpoints go on; free space there to get it back on the next run")
            if writer is not None:
                with contextlib.suppress(OSError):
                    writer.close()

    @_main_rank_only
    def scalars(self, values: dict[str, float], step: int) -> None:
        with self._tensorboard() as writer:
            if writer is not None:
                writer.scalars(values, step)

    @_main_rank_only
    def record_epoch(self, record: EpochRecord) -> None:
        assert self.history is not None
        self.history.append(record)

    @_main_rank_only
    def truncate_history(self, completed_epochs: int) -> None:
        """On resume: drop records of epochs after the checkpoint, they are trained again."""
        self.history = History.load(self.dir / "history.json")
        self.history.truncate(completed_epochs)

    @_main_rank_only
    def save_checkpoint(self, state: dict[str, Any], epoch: int, batch_in_epoch: int | None,
                        is_best: bool) -> Path:
        path = save_checkpoint(state, self.checkpoint_dir, checkpoint_name(epoch, batch_in_epoch),
                               keep=self.cfg.training.max_checkpoints)
        if is_best:
            mirror_best(path, self.best_path)
        self.remove_stale_temporaries()
        return path

    @_main_rank_only
    def remove_stale_temporaries(self) -> None:
        """Delete what killed writers (SIGKILL, OOM, preemption) left half-written in the output folders."""
        for directory in (self.dir, self.checkpoint_dir):
            for path in atomic.remove_stale_temporaries(directory):
                self.log(f"removed {path}, left by a writer that was killed")

    @_main_rank_only
    def save_visualizations(self, epoch: int, panels: list[tuple[str, np.ndarray]], step: int) -> None:
        """Write side-by-side panels as PNGs under visualizations/epoch_XXX and one stacked image to TensorBoard."""
        folder = self.dir / "visualizations" / f"epoch_{epoch:03d}"
        for name, panel in panels:
            with atomic.atomic_open(folder / f"{name}.png", "wb") as fh:
                Image.fromarray(panel).save(fh, format="PNG")
        with self._tensorboard() as writer:
            if writer is not None and panels:
                width = max(p.shape[1] for _, p in panels)
                padded = [np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0)), constant_values=255) for _, p in panels]
                writer.image("val/overlay", np.concatenate(padded, axis=0), step)

    @_main_rank_only
    def save_evaluation(self, result: NativeEvalResult, split: str, step: int) -> Path:
        """Write an evaluation's report to ``eval/<split>/`` and its scalars to TensorBoard as ``eval/<split>/...``."""
        folder = self.dir / "eval" / split
        write_report(result, folder)
        self.scalars(result.scalars(f"eval/{split}"), step)
        self.log(f"{split} (native resolution, {result.frames} frames): mIoU {result.mean_iou:.4f} | "
                 f"acc {result.pixel_acc:.4f} | flicker {result.video.flicker:.4f} | report in {folder}")
        return folder

    @_main_rank_only
    def finish(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        with self._tensorboard() as writer:
            if writer is not None:
                writer.hparams(hparams, metrics)
                writer.close()
        self.writer = None

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint in this run's directory (any rank may ask)."""
        found = list_checkpoints(self.checkpoint_dir)
        return found[-1].path if found else None
