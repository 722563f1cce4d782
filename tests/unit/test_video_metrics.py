"""VC_n and flicker rate against values computed by hand on tiny constructed sequences."""

from __future__ import annotations

import math

import pytest
import torch

from dist_seg.config import IGNORE_INDEX
from dist_seg.eval.video_metrics import VideoMetricsAccumulator

V = IGNORE_INDEX


def frames(*rows: list[list[int]]) -> torch.Tensor:
    """``[T, H, W]`` int64 from nested lists."""
    return torch.tensor(rows, dtype=torch.int64)


def run(pred: torch.Tensor, target: torch.Tensor, windows=(2, 8, 16), key="seq", batch: int = 3):
    acc = VideoMetricsAccumulator(windows)
    for start in range(0, len(pred), batch):
        acc.update(pred[start:start + batch], target[start:start + batch], [key] * len(pred[start:start + batch]))
    return acc.result()


def test_static_scene_is_perfectly_consistent():
    scene = torch.randint(0, 5, (20, 4, 6), generator=torch.Generator().manual_seed(0))[:1].repeat(20, 1, 1)
    wrong_but_stable = (scene + 1) % 5  # consistency is about change, not about being right
    metrics = run(wrong_but_stable, scene)
    seq = metrics.sequences["seq"]
    assert seq.frames == 20
    assert seq.vc == {2: 1.0, 8: 1.0, 16: 1.0}
    assert seq.vc_windows == {2: 19, 8: 13, 16: 5}
    assert seq.flicker == 0.0 and seq.static_pixels == 19 * 24 and seq.flickering_pixels == 0


def test_one_flickering_pixel():
    # 3x3 frames, label 1 everywhere and constant; prediction right except pixel (0,0) alternating 1, 2, 1, ...
    target = torch.ones(8, 3, 3, dtype=torch.int64)
    pred = target.clone()
    pred[1::2, 0, 0] = 2
    metrics = run(pred, target)
    seq = metrics.sequences["seq"]
    # Every pair: 9 static pixels, 8 keep their prediction. The one window of 8: same 8 of 9.
    assert seq.vc[2] == pytest.approx(8 / 9) and seq.vc_windows[2] == 7
    assert seq.vc[8] == pytest.approx(8 / 9) and seq.vc_windows[8] == 1
    assert math.isnan(seq.vc[16]) and seq.vc_windows[16] == 0  # 8 frames hold no window of 16
    assert seq.flicker == pytest.approx(7 / 63)  # 1 of 9 pixels changes in each of 7 pairs
    assert math.isnan(metrics.vc[16])


def test_moving_object_with_a_lagging_prediction():
    # A 1x4 strip: object (2) moves one pixel right per frame over background (0); the prediction lags a frame.
    target = frames([[2, 0, 0, 0]], [[0, 2, 0, 0]], [[0, 0, 2, 0]])
    pred = frames([[2, 0, 0, 0]], [[2, 0, 0, 0]], [[0, 2, 0, 0]])
    seq = run(pred, target, windows=(2, 3)).sequences["seq"]
    # Window (0,1): static labels at x=2,3, both predicted constantly -> 1.
    # Window (1,2): static labels at x=0,3; x=0 prediction goes 2 -> 0 -> 1/2.   VC_2 = (1 + 1/2) / 2.
    assert seq.vc[2] == pytest.approx(0.75)
    # Window (0,1,2): only x=3 keeps its label in all three frames, and its prediction -> 1.
    assert seq.vc[3] == pytest.approx(1.0)
    assert (seq.static_pixels, seq.flickering_pixels) == (4, 1)
    assert seq.flicker == pytest.approx(0.25)


def test_void_pixels_count_nowhere():
    target = frames([[1, V, 1, V]], [[1, V, 1, 1]], [[1, V, 1, 1]])
    pred = frames([[1, 0, 1, 3]], [[2, 3, 1, 4]], [[2, 0, 1, 4]])
    seq = run(pred, target, windows=(2, 3)).sequences["seq"]
    # Pair (0,1): static x=0,2 (x=1 void, x=3 void -> labelled is not static); x=0 changes -> 1/2.
    # Pair (1,2): static x=0,2,3; none changes -> 1.                        VC_2 = 3/4
    assert seq.vc[2] == pytest.approx(0.75)
    # Window (0,1,2): static x=0,2; x=0 changed in the first pair -> 1/2.
    assert seq.vc[3] == pytest.approx(0.5)
    assert (seq.static_pixels, seq.flickering_pixels) == (5, 1)


def test_sequences_are_separate_and_averaged_per_sequence_while_flicker_is_pooled():
    still = torch.zeros(3, 2, 5, dtype=torch.int64)  # 10 static pixels per pair, nothing changes
    moving_target = torch.zeros(3, 1, 2, dtype=torch.int64)
    moving_pred = frames([[0, 0]], [[1, 0]], [[1, 0]])  # one change in the first pair
    acc = VideoMetricsAccumulator((2,))
    acc.update(still, still, ["a"] * 3)
    # The next frame of another sequence is never paired with the last frame of "a".
    acc.update(moving_pred, moving_target, ["b"] * 3)
    metrics = acc.result()
    assert metrics.sequences["a"].vc[2] == 1.0 and metrics.sequences["a"].static_pixels == 20
    assert metrics.sequences["b"].vc[2] == pytest.approx((1 / 2 + 1) / 2)
    assert metrics.vc[2] == pytest.approx((1 + 0.75) / 2)  # mean over sequences
    assert metrics.flicker == pytest.approx(1 / 24)  # pooled: 1 change among 20 + 4 static pixels
    assert acc.flicker_counts().tolist() == [24.0, 1.0]


def test_batches_do_not_change_the_result_and_totals_add_up_over_shards():
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 3, (1, 6, 7), generator=g).repeat(17, 1, 1)
    target[5:, :2] = torch.randint(0, 3, (2, 7), generator=g)
    target[9:12, 3] = V
    pred = torch.where(torch.rand(17, 6, 7, generator=g) < 0.1, (target + 1) % 3, target)
    whole = run(pred, target, batch=17).sequences["seq"]
    for batch in (1, 4, 5):
        assert run(pred, target, batch=batch).sequences["seq"] == whole
    # Two "ranks" each owning one whole sequence, rows summed like an all-reduce.
    ranks = [VideoMetricsAccumulator(sequence_names=["x", "y"]) for _ in range(2)]
    ranks[0].update(pred, target, ["x"] * 17)
    ranks[1].update(pred.flip(-1), target.flip(-1), ["y"] * 17)
    merged = ranks[0].result(ranks[0].totals() + ranks[1].totals())
    assert merged.sequences["x"] == whole
    assert merged.sequences["y"].vc == pytest.approx(whole.vc, nan_ok=True)


def test_validation_reports_the_flicker_of_consecutive_frames_per_folder():
    from dist_seg.config import BackendConfig
    from dist_seg.runtime.device import resolve_runtime
    from dist_seg.runtime.distributed import DistContext
    from dist_seg.train.augment import BatchPreparer
    from dist_seg.train.losses import SegmentationLoss
    from dist_seg.train.validation import evaluate

    cpu = torch.device("cpu")
    runtime = resolve_runtime(BackendConfig(target="cpu", amp=False, compile=False), cpu, log=lambda _m: None)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1)  # returns a tensor; evaluate reads tensors and {"out": ...} alike
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, 3, (1, 5, 7), dtype=torch.uint8, generator=g).repeat(6, 1, 1)
    paths = [f"/d/Images/A/{i}.png" for i in range(4)] + [f"/d/Images/B/{i}.png" for i in range(2)]
    batches = [(images[:4], masks[:4], paths[:4]), (images[4:], masks[4:], paths[4:])]
    result = evaluate(model, batches, BatchPreparer(cpu, torch.contiguous_format, (5, 7)),
                      runtime, SegmentationLoss(), DistContext(0, 0, 1, cpu, None), ["a", "b", "c"], None)
    with torch.no_grad():
        x = BatchPreparer(cpu, torch.contiguous_format, (5, 7)).eval_batch(images, masks)[0]
        pred = model(x).argmax(1)
    pairs = [(0, 1), (1, 2), (2, 3), (4, 5)]  # never (3, 4): another folder
    changed = sum(int((pred[a] != pred[b]).sum()) for a, b in pairs)
    assert result.flicker == pytest.approx(changed / (4 * 35))
