"""history.json: append, reload, truncate on resume, best epoch."""

from __future__ import annotations

import json

import pytest

from dist_seg.errors import DistSegError
from dist_seg.telemetry.history import EpochRecord, History


def record(epoch: int, miou: float | None = None, loss: float = 1.0) -> EpochRecord:
    return EpochRecord(epoch=epoch, global_step=10 * epoch, train_loss=loss, lr=1e-4, train_images_per_s=250.0,
                       data_wait_frac=0.05, epoch_time_s=12.5, world_size=2, global_batch_size=8,
                       val_loss=None if miou is None else 0.9, val_mIoU=miou, val_pixel_acc=None if miou is None else 0.8,
                       val_iou=None if miou is None else {"road": 0.9, "car": miou})


def test_round_trip_and_file_is_a_plain_json_list(tmp_path):
    path = tmp_path / "history.json"
    history = History(path)
    history.append(record(1))
    history.append(record(2, miou=0.5))

    on_disk = json.loads(path.read_text())
    assert [r["epoch"] for r in on_disk] == [1, 2] and on_disk[1]["val_iou"] == {"road": 0.9, "car": 0.5}
    assert History.load(path).records == (record(1), record(2, miou=0.5))
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"], "no temporary file left behind"


def test_truncate_drops_epochs_after_the_resumed_one(tmp_path):
    path = tmp_path / "history.json"
    history = History(path)
    for epoch in range(1, 5):
        history.append(record(epoch))
    resumed = History.load(path)
    resumed.truncate(2)
    resumed.append(record(3, miou=0.7))

    assert [r.epoch for r in History.load(path).records] == [1, 2, 3]
    assert History.load(path).records[-1].val_mIoU == 0.7


def test_append_refuses_an_epoch_out_of_order(tmp_path):
    history = History(tmp_path / "history.json")
    history.append(record(3))
    with pytest.raises(ValueError, match="truncate"):
        history.append(record(3))


def test_missing_file_is_an_empty_history_and_nan_is_stored_as_null(tmp_path):
    path = tmp_path / "history.json"
    assert History.load(path).records == ()
    history = History(path)
    history.append(record(1, miou=float("nan")))
    assert json.loads(path.read_text())[0]["val_mIoU"] is None
    assert History.load(path).records[0].val_mIoU is None


def test_corrupt_or_foreign_file_is_a_clear_error(tmp_path):
    path = tmp_path / "history.json"
    path.write_text("{not json")
    with pytest.raises(DistSegError, match="history.json"):
        History.load(path)
    path.write_text(json.dumps({"train_loss": [1.0, 0.5]}))  # the original pipeline's shape
    with pytest.raises(DistSegError, match="list"):
        History.load(path)
    path.write_text(json.dumps([{"epoch": 1}]))
    with pytest.raises(DistSegError, match="missing .*global_step"):
        History.load(path)
