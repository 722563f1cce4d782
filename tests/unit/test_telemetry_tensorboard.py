"""RunWriter and the VRAM sink, checked by reading the real event files back."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from dist_seg.telemetry.tensorboard import VRAM_METRICS, RunWriter, TensorBoardVramSink, rank_log_dir
from dist_seg.telemetry.vram import VramSample, VramSampler


def read(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def sample(rank: int, step: int, **overrides) -> VramSample:
    values = dict(time=1_700_000_000.0 + step, step=step, rank=rank, device_index=rank, device_uuid=f"GPU-{rank}",
                  source="nvml", pid_visible=True, process_mb=1500.0, device_used_mb=2600.0, device_total_mb=81559.0,
                  allocated_mb=800.0, reserved_mb=1024.0, max_allocated_mb=900.0, non_torch_mb=476.0, host_rss_mb=2100.0)
    values.update(overrides)
    return VramSample(**values)


def test_vram_sink_writes_per_rank_tags_into_per_rank_dirs(tmp_path):
    root = tmp_path / "tensorboard"
    with RunWriter(rank_log_dir(root, 0)) as w0, RunWriter(rank_log_dir(root, 1)) as w1:
        TensorBoardVramSink(w0)(sample(0, 10))
        TensorBoardVramSink(w0)(sample(0, 20, reserved_mb=2048.0))
        # Rank 1 inside a container: no per-process figure.
        TensorBoardVramSink(w1)(sample(1, 10, process_mb=None, pid_visible=False))

    assert rank_log_dir(root, 1) == root / "rank1"
    acc0, acc1 = read(root), read(root / "rank1")
    assert set(acc0.Tags()["scalars"]) == {f"vram/rank0/{m}" for m in VRAM_METRICS} | {"host/rank0/rss_mb"}
    assert set(acc1.Tags()["scalars"]) == {f"vram/rank1/{m}" for m in VRAM_METRICS if m != "process_mb"} | {
        "host/rank1/rss_mb"}
    reserved = acc0.Scalars("vram/rank0/reserved_mb")
    assert [(e.step, e.value) for e in reserved] == [(10, 1024.0), (20, 2048.0)]
    assert reserved[0].wall_time == pytest.approx(1_700_000_010.0)
    assert acc1.Scalars("vram/rank1/non_torch_mb")[0].value == pytest.approx(476.0)


def test_sampler_to_tensorboard_end_to_end_on_cpu(tmp_path):
    with RunWriter(tmp_path) as writer:
        with VramSampler(2, "cpu", interval_s=3600, sinks=[TensorBoardVramSink(writer)], step_fn=lambda: 5,
                         log=lambda _: None):
            pass
    events = read(tmp_path).Scalars("host/rank2/rss_mb")
    assert len(events) == 2 and all(e.step == 5 and e.value > 0 for e in events)
    assert not any(t.startswith("vram/") for t in read(tmp_path).Tags()["scalars"])


def test_scalars_image_and_text_round_trip(tmp_path):
    image = np.zeros((6, 8, 3), dtype=np.uint8)
    image[:, :4] = (128, 64, 128)
    with RunWriter(tmp_path) as writer:
        writer.scalars({"train/loss": 0.5, "val/mIoU": None}, step=3)
        writer.image("val/overlay", image, step=3)
        writer.text("notes", "hello **world**")
        writer.config_text("training:\n  epochs: 2\n")
        with pytest.raises(ValueError):
            writer.image("bad", image.astype(np.float32), step=3)

    acc = read(tmp_path)
    assert acc.Tags()["scalars"] == ["train/loss"]
    assert acc.Scalars("train/loss")[0].value == pytest.approx(0.5)
    overlay = acc.Images("val/overlay")[0]
    assert (overlay.height, overlay.width, overlay.step) == (6, 8, 3)
    assert acc.Tensors("notes/text_summary")[0].tensor_proto.string_val[0] == b"hello **world**"
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert config.splitlines() == ["    training:", "      epochs: 2"]


def test_hparams_land_in_the_run_dir_itself(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.scalars({"val/mIoU": 0.4}, step=100)
        writer.hparams({"training": {"learning_rate": 1e-4, "image_size": [512, 512]}, "model": "deeplabv3plus",
                        "resume": None},
                       {"hparam/best_mIoU": 0.61, "hparam/final_val_loss": None}, step=100)

    assert [p for p in tmp_path.iterdir() if p.is_dir()] == [], "no timestamped sub-run"
    acc = read(tmp_path)
    assert acc.Scalars("hparam/best_mIoU")[0].value == pytest.approx(0.61)
    assert "hparam/final_val_loss" not in acc.Tags()["scalars"]
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["training.learning_rate"].number_value == pytest.approx(1e-4)
    assert start.hparams["training.image_size"].string_value == "[512, 512]"
    assert start.hparams["model"].string_value == "deeplabv3plus"
    assert start.hparams["resume"].string_value == "None"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["hparam/best_mIoU"]


def test_custom_scalars_put_all_ranks_of_a_metric_in_one_chart(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.custom_scalars_layout(["road", "traffic_sign", "a+b"], world_size=3)

    proto = read(tmp_path).Tensors("custom_scalars__config__")[0].tensor_proto
    layout = layout_pb2.Layout.FromString(proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["vram reserved_mb"] == [f"^vram/rank{k}/reserved_mb$" for k in range(3)]
    assert set(f"vram {m}" for m in VRAM_METRICS) <= set(charts)
    assert charts["host rss_mb"] == [f"^host/rank{k}/rss_mb$" for k in range(3)]
    assert charts["IoU per class"] == ["^val/IoU/road$", "^val/IoU/traffic_sign$", r"^val/IoU/a\+b$"]
    assert charts["loss (train and val)"] == ["^train/loss$", "^val/loss$"]
