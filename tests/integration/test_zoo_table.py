"""benchmarks/zoo.py --train: a real training run per pair, mIoU in equal time and ONNX export parity.

The equal-time scoring is checked on made-up curves; one real run (LR-ASPP, one epoch at
64x64 on a synthetic dataset, then its ONNX export) checks the table's columns. No timing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

pytest.importorskip("segmentation_models_pytorch", reason="the zoo extra is not installed (pip install -e '.[zoo]')")
pytest.importorskip("onnxruntime", reason="the export extra is not installed")

from benchmarks.zoo import main as zoo_main  # noqa: E402
from benchmarks.zoo import score_in_equal_time, table  # noqa: E402
from dist_seg.synth import generate_dataset  # noqa: E402


def _row(name: str, *curve: tuple[float, float]) -> dict:
    return {"model": name, "params_m": 1.0, "gflops": 1.0, "train_img_s": 5.0, "total_s": curve[-1][0],
            "best_mIoU": max(m for _, m in curve), "final_mIoU": curve[-1][1],
            "curve": [{"epoch": i + 1, "wall_s": t, "miou": m} for i, (t, m) in enumerate(curve)]}


def test_equal_time_scores_every_model_within_the_same_seconds():
    fast = _row("fast", (10.0, 0.2), (20.0, 0.3))
    slow = _row("slow", (15.0, 0.1), (30.0, 0.5))
    late = _row("late", (25.0, 0.6))
    rows = [fast, slow, late, {"model": "x", "skipped": "no zoo extra"}]
    score_in_equal_time(rows, None)  # budget: the shortest run, 20 s
    assert [r.get("mIoU_in_budget") for r in rows] == [0.3, 0.1, None, None]
    assert "best val mIoU within 20 s" in table(rows) and "| late | 1.00 | 1.0 | 5.00 | n/a | 0.600 / 0.600 | 25 |" \
        in table(rows)
    score_in_equal_time(rows, 30.0)
    assert [r["mIoU_in_budget"] for r in rows[:3]] == [0.3, 0.5, 0.6]


@pytest.mark.slow
def test_train_mode_adds_speed_accuracy_and_export_parity(tmp_path, capsys):
    data = tmp_path / "data"
    generate_dataset(data, sequences=3, frames=4, size=(48, 64), seed=2)
    out = tmp_path / "zoo.json"
    assert zoo_main(["--size", "64x64", "--train", "--epochs", "1", "--data-root", str(data), "--work",
                     str(tmp_path / "runs"), "--pairs", "lraspp:mobilenet_v3_large", "--json", str(out)]) == 0
    [row] = json.loads(out.read_text())
    assert row["model"] == "lraspp with backbone mobilenet_v3_large"
    assert row["export"] == "passed" and row["parity_relative_logit_diff"] <= 1e-3
    assert row["train_img_s"] > 0 and row["budget_s"] == row["total_s"]
    assert [p["epoch"] for p in row["curve"]] == [1]
    assert 0.0 <= row["final_mIoU"] == row["best_mIoU"] == row["mIoU_in_budget"] <= 1.0
    assert (tmp_path / "runs" / "lraspp-mobilenet_v3_large" / "export" / "model.onnx").is_file()
    assert "(passed)" in capsys.readouterr().out
