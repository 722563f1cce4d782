"""``history.json``: one record per finished epoch, rewritten atomically after each.

The file is a JSON list of objects with the fields of :class:`EpochRecord`, so any tool
can plot it. On resume the trainer loads it and drops the records after the checkpoint's
epoch (they belong to a run that was killed later), then keeps appending.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import DistSegError


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did. Validation fields are None on epochs without validation."""

    epoch: int
    global_step: int
    train_loss: float
    lr: float
    train_images_per_s: float
    data_wait_frac: float
    epoch_time_s: float
    world_size: int
    global_batch_size: int
    val_loss: float | None = None
    val_mIoU: float | None = None
    val_pixel_acc: float | None = None
    val_iou: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain dict; NaN/inf become None so the file stays strict JSON."""
        return {k: _finite(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: Any, where: str) -> EpochRecord:
        """A record from a parsed JSON object; :class:`DistSegError` naming ``where`` if malformed."""
        if not isinstance(data, dict):
            raise DistSegError(f"{where}: expected an object per epoch, got {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise DistSegError(f"{where}: missing {', '.join(missing)}; the file was not written by this "
                               "dist_seg version: move it away to start a fresh history")
        # Keys a newer version added are ignored so an older one can still resume.
        return cls(**{k: v for k, v in data.items() if k in names})


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class History:
    """The ordered epoch records of one run, mirrored to ``path`` on every change."""

    def __init__(self, path: str | os.PathLike, records: tuple[EpochRecord, ...] = ()) -> None:
        self.path = Path(path)
        self._records = list(records)

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        """The history stored at ``path``; empty if the file does not exist yet."""
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DistSegError(f"{path}: cannot read the training history ({exc}); move it away to start fresh") from exc
        if not isinstance(data, list):
            raise DistSegError(f"{path}: expected a JSON list of epoch records")
        return cls(path, tuple(EpochRecord.from_json(item, f"{path} [{i}]") for i, item in enumerate(data)))

    @property
    def records(self) -> tuple[EpochRecord, ...]:
        """All records, oldest first."""
        return tuple(self._records)

    def append(self, record: EpochRecord) -> None:
        """Add one epoch and rewrite the file."""
        if self._records and record.epoch <= self._records[-1].epoch:
            raise ValueError(f"epoch {record.epoch} does not follow epoch {self._records[-1].epoch}; "
                             "call truncate() when resuming")
        self._records.append(record)
        self.save()

    def truncate(self, epoch: int) -> None:
        """Drop records after ``epoch`` (the epoch a resumed checkpoint ended) and rewrite the file."""
        self._records = [r for r in self._records if r.epoch <= epoch]
        self.save()

    def save(self) -> None:
        """Write all records to ``path`` atomically."""
        atomic.write_json(self.path, [r.to_json() for r in self._records])
