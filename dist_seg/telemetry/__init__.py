"""Monitoring: TensorBoard, per-rank VRAM sampling, memory log, epoch history, console progress.

Nothing here knows about the training engine; the engine builds these pieces and feeds them.
"""

from .history import EpochRecord, History
from .memlog import MemoryLog
from .progress import Progress, format_epoch
from .tensorboard import RunWriter, TensorBoardVramSink, rank_log_dir
from .vram import PeakSummary, VramSample, VramSampler

__all__ = [
    "EpochRecord",
    "History",
    "MemoryLog",
    "PeakSummary",
    "Progress",
    "RunWriter",
    "TensorBoardVramSink",
    "VramSample",
    "VramSampler",
    "format_epoch",
    "rank_log_dir",
]
