"""benchmarks time_to_accuracy suite: the --quick run trains every pipeline for real and writes well-formed results.

No timing is checked: only that all four runs happen, the curves are consistent and the files
(results JSON, curves JSON, PNG plot) are well formed. The data is a small synthetic
dataset, so the test does not depend on the shared CamVid folder.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import run  # noqa: E402
from benchmarks.suites.time_to_accuracy import Point, choose_split, summarise  # noqa: E402
from dist_seg.synth import generate_dataset  # noqa: E402


def _curve(*points: tuple[float, float]) -> list[Point]:
    return [Point(i + 1, t, m) for i, (t, m) in enumerate(points)]


def test_summary_times_targets_and_budgets():
    reference = _curve((10.0, 0.10), (20.0, 0.25), (30.0, 0.20))
    dist_seg = _curve((5.0, 0.15), (9.0, 0.22), (25.0, 0.40), (40.0, 0.50))
    s = summarise(reference, dist_seg)
    assert s["target_mIoU"] == 0.2 and s["reference_total_s"] == 30.0
    assert s["reference_time_to_target_s"] == 20.0 and s["dist_seg_time_to_target_s"] == 9.0
    assert s["time_to_target_ratio"] == 0.45
    # Within the reference's 30 s dist_seg reached 0.40 (its 0.50 came later).
    assert s["reference_best_mIoU_within_reference_time"] == 0.25
    assert s["dist_seg_best_mIoU_within_reference_time"] == 0.4 and s["best_mIoU_ratio"] == 1.6
    never = summarise(reference, _curve((5.0, 0.1)))
    assert never["dist_seg_time_to_target_s"] is None and never["time_to_target_ratio"] is None


def test_split_prefers_camvid_names_else_last_sequence_validates(tmp_path):
    for name in ("Seq05VD", "0006R0", "0001TP", "extra"):
        (tmp_path / "camvid" / "Images" / name).mkdir(parents=True)
    assert choose_split(tmp_path / "camvid") == (("0001TP", "0006R0"), ("Seq05VD",))
    for name in ("Video_000", "Video_001", "Video_002"):
        (tmp_path / "synth" / "Images" / name).mkdir(parents=True)
    assert choose_split(tmp_path / "synth") == (("Video_000", "Video_001"), ("Video_002",))
    with pytest.raises(FileNotFoundError, match="Images"):
        choose_split(tmp_path / "missing")


@pytest.mark.slow
def test_quick_suite_runs_every_pipeline_and_writes_well_formed_results(tmp_path):
    data = tmp_path / "data"
    generate_dataset(data, sequences=3, frames=8, size=(48, 64), seed=3)
    out = tmp_path / "out"
    assert run.main(["--quick", "--suite", "time_to_accuracy", "--out", str(out), "--scratch",
                     str(tmp_path / "scratch"), "--data-root", str(data)]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["meta"]["failures"] == [] and payload["meta"]["suites"] == ["time_to_accuracy"]
    records = {r["variant"]: r for r in payload["records"]}
    assert set(records) == {"reference", "torchvision recipe", "mmseg recipe", "dist_seg"}
    for r in records.values():
        assert r["metric"] == "wall_clock_s" and r["median"] > 0 and math.isfinite(r["median"])
        assert r["settings"]["train"] == ["Video_000", "Video_001"] and r["settings"]["val"] == ["Video_002"]
    assert {"final_mIoU", "time_to_target_s", "best_mIoU_within_reference_time"} <= records["reference"]["derived"].keys()
    assert {"time_to_target_ratio", "best_mIoU_ratio", "best_mIoU"} <= records["dist_seg"]["derived"].keys()
    for peer in ("torchvision", "mmseg"):
        assert {"final_mIoU", "time_to_target_s", "best_mIoU_within_own_time", "dist_seg_time_to_target_s",
                "dist_seg_best_mIoU_within_reference_time", "dist_seg_best_mIoU_ratio"} <= \
            records[f"{peer} recipe"]["derived"].keys()

    curves = json.loads(Path(records["reference"]["settings"]["curves"]).read_text())
    assert curves["cpu"] and curves["summary"]["target_mIoU"] == records["reference"]["derived"]["final_mIoU"]
    assert set(curves["peer_summaries"]) == {"torchvision", "mmseg"}
    for name in ("reference", "torchvision", "mmseg", "dist_seg"):
        points = curves["curves"][name]
        assert [p["epoch"] for p in points] == [1]  # --quick: one epoch each
        assert all(p["wall_s"] > 0 and 0.0 <= p["miou"] <= 1.0 for p in points)
    # Each reference reaches its own final mIoU at its last epoch, by definition.
    for summary in (curves["summary"], *curves["peer_summaries"].values()):
        assert summary["reference_time_to_target_s"] == summary["reference_total_s"]
    peer = curves["peer_summaries"]["mmseg"]
    assert peer["target_mIoU"] == records["mmseg recipe"]["derived"]["final_mIoU"]
    assert peer["dist_seg_time_to_target_s"] == records["mmseg recipe"]["derived"]["dist_seg_time_to_target_s"]
    with Image.open(records["reference"]["settings"]["plot"]) as plot:
        assert plot.format == "PNG" and plot.size == (800, 500)
