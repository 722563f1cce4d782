"""TensorBoard output: a small writer for one run directory, and the VRAM sink.

Rank 0 writes the run's scalars, images, text and hparams into ``<output_dir>/tensorboard/``;
every other rank writes only its own VRAM/host scalars into ``tensorboard/rank<k>/``, so no
rank ever waits on another. Tags carry the rank (``vram/rank<k>/...``), and the
custom-scalars layout puts all ranks of one metric in one chart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from .vram import VramSample

VRAM_METRICS = (
    "process_mb",
    "allocated_mb",
    "reserved_mb",
    "max_allocated_mb",
    "device_used_mb",
    "device_total_mb",
    "non_torch_mb",
)


def rank_log_dir(root: str | os.PathLike, rank: int) -> Path:
    """Where ``rank`` writes its event files: ``root`` itself for rank 0, ``root/rank<k>`` otherwise."""
    return Path(root) if rank == 0 else Path(root) / f"rank{rank}"


def vram_scalars(sample: VramSample) -> dict[str, float | None]:
    """The per-rank TensorBoard tags of one VRAM sample (unknown figures as None)."""
    values: dict[str, float | None] = {f"vram/rank{sample.rank}/{m}": getattr(sample, m) for m in VRAM_METRICS}
    values[f"host/rank{sample.rank}/rss_mb"] = sample.host_rss_mb
    return values


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, int | float | str]:
    # The hparams plugin takes only numbers and strings; nested config sections become
    # dotted keys, and lists, paths and nulls their text, so every key stays visible.
    flat: dict[str, int | float | str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, (int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _exact(tags: list[str]) -> list[str]:
    return [f"^{re.escape(t)}$" for t in tags]


class RunWriter:
    """One TensorBoard run directory, written through ``torch.utils.tensorboard``."""

    def __init__(self, log_dir: str | os.PathLike, flush_secs: int = 30, purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run's first step; TensorBoard hides the points an earlier run wrote
        at that step and later, so steps trained again do not appear twice."""
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs, purge_step=purge_step)

    def scalars(self, values: Mapping[str, float | None], step: int, walltime: float | None = None) -> None:
        """One point per tag at ``step``; None values are skipped rather than drawn as 0."""
        for tag, value in values.items():
            if value is not None:
                self._writer.add_scalar(tag, float(value), step, walltime=walltime)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An ``H x W x C`` uint8 image (C = 3 for RGB; 1 and 4 also accepted)."""
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.dtype != np.uint8:
            raise ValueError(f"image {tag!r} must be an HxWxC uint8 array, got shape {image.shape} {image.dtype}")
        self._writer.add_image(tag, image, step, dataformats="HWC")

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Markdown text (TensorBoard's Text tab)."""
        self._writer.add_text(tag, text, step)

    def config_text(self, yaml_text: str) -> None:
        """The resolved config, shown verbatim (indented = a markdown code block)."""
        self.text("config", "\n".join("    " + line for line in yaml_text.splitlines()))

    def hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float | None], step: int | None = None) -> None:
        """Hyperparameters and final metrics, in this run's directory (not a timestamped subdir).

        Metric names should not reuse a scalar series' tag (use e.g. ``hparam/best_mIoU``):
        the final value is written as a scalar under that tag.
        """
        final = {k: float(v) for k, v in metrics.items() if v is not None}
        # SummaryWriter.add_hparams would open a second writer in log_dir/<timestamp>, which
        # shows up as a separate run; writing the three summaries here keeps one run.
        for summary in hparams_summaries(_flatten(hparams), final):
            self._writer.file_writer.add_summary(summary, step)
        self.scalars(final, step if step is not None else 0)

    def custom_scalars_layout(self, class_names: list[str], world_size: int) -> None:
        """Charts that group related tags: train vs val loss, IoU per class, each VRAM figure of all ranks."""
        ranks = range(world_size)
        memory = {
            f"vram {metric}": ["Multiline", _exact([f"vram/rank{k}/{metric}" for k in ranks])] for metric in VRAM_METRICS
        }
        memory["host rss_mb"] = ["Multiline", _exact([f"host/rank{k}/rss_mb" for k in ranks])]
        layout = {
            "Training": {
                "loss (train and val)": ["Multiline", _exact(["train/loss", "val/loss"])],
                "throughput img/s": ["Multiline", _exact(["train/throughput_img_s"])],
                "data wait fraction": ["Multiline", _exact(["train/data_wait_frac"])],
            },
            "Validation": {
                "mIoU and pixel accuracy": ["Multiline", _exact(["val/mIoU", "val/pixel_acc"])],
                "IoU per class": ["Multiline", _exact([f"val/IoU/{name}" for name in class_names])],
            },
            "Memory (all ranks)": memory,
        }
        self._writer.add_custom_scalars(layout)

    def flush(self) -> None:
        """Write pending events to disk."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TensorBoardVramSink:
    """A :class:`VramSampler` sink that writes each sample's ``vram/rank<k>/*`` and ``host/rank<k>/rss_mb``."""

    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer

    def __call__(self, sample: VramSample) -> None:
        """Write one sample at its training step, stamped with its wall time."""
        self.writer.scalars(vram_scalars(sample), sample.step, walltime=sample.time)
