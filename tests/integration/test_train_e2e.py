"""Real training runs on synthetic data: learning, outputs, resume, precision, compile, NaN guard, predict."""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.helpers import PYTHON, REPO_ROOT, TINY_NET, subprocess_env, tiny_config

from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.data.loader import build_loader
from dist_seg.data.pipeline import load_datasets, prepare
from dist_seg.errors import CheckpointError, ConfigError, DistSegError
from dist_seg.eval.report import REPORT_FILES
from dist_seg.eval.visualize import spread_indices
from dist_seg.models import build_model
from dist_seg.parallel import usable_cores
from dist_seg.predict import main as predict_main
from dist_seg.runtime import threads as threads_module
from dist_seg.runtime.device import resolve_runtime
from dist_seg.runtime.distributed import DistContext
from dist_seg.train.augment import BatchPreparer
from dist_seg.train.losses import SegmentationLoss
from dist_seg.train.run import run_training
from dist_seg.train.step import NonFiniteLossError
from dist_seg.train.validation import evaluate

pytestmark = pytest.mark.slow

CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vram-sampler")]


def loader_threads() -> list[threading.Thread]:
    """Gather threads of cache loaders still running."""
    return [t for t in threading.enumerate() if t.name.startswith("dist_seg-gather") and t.is_alive()]


def final_state(out_dir: Path) -> dict[str, torch.Tensor]:
    """Model weights of the newest checkpoint of a run."""
    latest = list_checkpoints(out_dir / "checkpoints")[-1].path
    return torch.load(latest, weights_only=True)["model"]


def untrained_miou(cfg) -> float:
    """Validation mIoU of a freshly initialised model, through the same evaluation code."""
    prepare(cfg, log=lambda _m: None, progress=False)
    data = load_datasets(cfg)
    torch.manual_seed(cfg.training.seed)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    runtime = resolve_runtime(cfg.backend, CPU.device, log=lambda _m: None)
    prep = BatchPreparer(CPU.device, runtime.memory_format, tuple(cfg.training.image_size))
    loader = build_loader(data.val, cfg.training, CPU, train=False)
    return evaluate(model, loader, prep, runtime, SegmentationLoss(), CPU, cfg.dataset.class_names, None).mean_iou


def test_short_training_learns_and_writes_every_output(synth_root, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(synth_root, out, training__epochs=8, training__max_checkpoints=2,
                      training__visualization_interval=4)
    before = untrained_miou(cfg)
    summary = run_training(cfg)

    assert summary.status == "completed" and summary.epochs_completed == 8
    assert sampler_threads() == []
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 9))
    after = history[-1]["val_mIoU"]
    assert after > before + 0.15 and after > 2 * before, (before, after)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert set(history[-1]["val_iou"]) == set(cfg.dataset.class_names)
    for key in ("lr", "train_images_per_s", "data_wait_frac", "epoch_time_s", "val_pixel_acc", "global_batch_size"):
        assert history[-1][key] is not None

    # resolved config, splits, rotation, best mirror
    assert (out / "config.yaml").is_file()
    splits = json.loads((out / "splits.json").read_text())
    assert "Video_003" in json.dumps(splits)
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")] == ["epoch_0007.pth", "epoch_0008.pth"]
    best = torch.load(out / "best_model.pth", weights_only=True)
    best_epoch = max(history, key=lambda r: r["val_mIoU"])["epoch"]
    assert best["epoch"] == best_epoch and best["best_metric"] == pytest.approx(history[best_epoch - 1]["val_mIoU"])
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in best["model"])
    assert best["config"]["model"]["backbone"] == "resnet18"

    # visualizations every 4 epochs; the memory log of a CPU run holds host lines (GPU runs: the VRAM format)
    for epoch in (4, 8):
        panels = sorted((out / "visualizations" / f"epoch_{epoch:03d}").glob("*.png"))
        assert len(panels) == 2
        assert Image.open(panels[0]).size[0] > 3 * 64
    log = (out / "memory_diagnostics.log").read_text().splitlines()
    assert any(re.search(r"host RSS: [\d.]+ MB \| rank 0, step \d+$", line) for line in log)
    assert not any("VRAM: n/a" in line for line in log)


def test_training_writes_tensorboard_tags(synth_root, deeplab_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = deeplab_run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"train/loss", "train/lr", "train/throughput_img_s", "train/data_wait_frac", "val/loss",
                "val/mIoU", "val/pixel_acc", "host/rank0/rss_mb"}
    assert expected <= tags, expected - tags
    assert any(t.startswith("val/IoU/") for t in tags)
    assert "val/overlay" in acc.Tags()["images"]
    # a fixed, spread-out choice of validation frames, not the first ones
    val_frames = sorted(p.stem for p in (synth_root / "Images" / "Video_003").glob("*.png"))
    shown = sorted(p.stem for p in (out / "visualizations" / "epoch_001").glob("*.png"))
    assert shown == [val_frames[i] for i in spread_indices(len(val_frames), 2)] and shown != val_frames[:2]


def test_end_of_training_scores_the_best_checkpoint_on_the_test_split(deeplab_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = deeplab_run
    folder = out / "eval" / "test"
    assert sorted(p.name for p in folder.iterdir()) == sorted(REPORT_FILES)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert Path(metrics["checkpoint"]) == out / "best_model.pth"
    assert list(metrics["sequences"]) == ["Video_002"] and metrics["frames"] == 8
    assert 0.0 <= metrics["mean_iou"] <= 1.0 and metrics["flicker"] is not None
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"eval/test/mIoU", "eval/test/pixel_acc", "eval/test/flicker", "eval/test/VC_2", "val/flicker"} <= tags
    assert acc.Scalars("eval/test/mIoU")[-1].value == pytest.approx(metrics["mean_iou"], rel=1e-6)


def test_final_eval_switch_off_writes_no_test_report(synth_root, tmp_path):
    out = tmp_path / "run"
    # The switch, not the model, decides: the two-conv TinyNet trains in a fraction of DeepLab's time.
    summary = run_training(tiny_config(synth_root, out, training__epochs=1, training__final_eval=False,
                                       dataset__split__test=["Video_002"], model=TINY_NET))
    assert summary.status == "completed" and not (out / "eval").exists()


@pytest.fixture(scope="module")
def straight(synth_root, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run, the reference both resume-equivalence tests compare with."""
    out = tmp_path_factory.mktemp("straight") / "run"
    run_training(tiny_config(synth_root, out, training__epochs=2))
    return out


def test_resume_equivalence_epoch_boundary(synth_root, tmp_path, straight):
    split = tmp_path / "split"
    run_training(tiny_config(synth_root, split, training__epochs=2, training__max_steps=6))
    resumed = run_training(tiny_config(synth_root, split, training__epochs=2,
                                       training__resume_from_checkpoint="auto"))
    assert resumed.status == "completed" and resumed.epochs_completed == 2
    a, b = final_state(straight), final_state(split)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = json.loads((split / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]


def test_resume_equivalence_mid_epoch(synth_root, tmp_path, straight):
    """A run stopped inside an epoch (as by preemption) continues exactly where it stopped."""
    split = tmp_path / "split"
    first = run_training(tiny_config(synth_root, split, training__epochs=2, training__max_steps=4))
    assert first.status == "max_steps"
    assert list_checkpoints(split / "checkpoints")[-1].step == 4
    run_training(tiny_config(synth_root, split, training__epochs=2, training__resume_from_checkpoint="auto"))
    a, b = final_state(straight), final_state(split)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the epoch cut in two reports the same loss as the uninterrupted one: its totals were checkpointed
    first_straight = json.loads((straight / "history.json").read_text())[0]
    first_split = json.loads((split / "history.json").read_text())[0]
    assert first_split["train_loss"] == pytest.approx(first_straight["train_loss"], rel=1e-6)


def test_bfloat16_autocast_on_cpu(synth_root, tmp_path, capsys):
    summary = run_training(tiny_config(synth_root, tmp_path / "run", training__epochs=1,
                                       backend__amp_dtype="bfloat16"))
    assert "autocast bfloat16" in capsys.readouterr().out
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert math.isfinite(history[0]["train_loss"]) and summary.status == "completed"


def test_float16_amp_is_switched_off_on_cpu_with_a_message(synth_root, tmp_path, capsys):
    # float16 named explicitly: with amp_dtype auto a CPU with avx512_bf16 autocasts bfloat16 instead.
    run_training(tiny_config(synth_root, tmp_path / "run", training__epochs=1, training__max_steps=1,
                             backend__amp_dtype="float16"))
    assert "AMP off: float16 autocast needs a GPU" in capsys.readouterr().out


def test_startup_summary_names_what_will_run(synth_root, tmp_path, capsys):
    run_training(tiny_config(synth_root, tmp_path / "run", training__epochs=1, training__max_steps=1,
                             dataset__void_class="void", backend__cpu_threads=1))
    log = capsys.readouterr().out
    summary = log[log.index("run:\n"):log.index("epoch 1/1")]
    expected = [r"model +deeplabv3plus / resnet18 \| \d+\.\d+ M parameters \| \d+\.\d GFLOPs per image \(forward\) at 48x64",
                r"input +48x64 \| cache 48x64", r"classes +13 \(rgb masks, void ignored\)",
                r"data +24 train / 8 val frames", r"global batch 4",
                r"precision training (float32|autocast bfloat16) \| visualisations, final evaluation fp32 "
                r"\(the predict / evaluate default\) \| channels_last off \| compile off",
                r"loader +full cache served by the main thread", r"threads +torch intra-op 1 \(backend.cpu_threads\)",
                r"device +cpu \(.+\) x 1 rank"]
    for pattern in expected:
        assert re.search(pattern, summary), (pattern, summary)
    assert torch.get_num_threads() == 1
    assert log.count("[vram rank 0]") <= 1


@pytest.mark.parametrize("use_cache, processes", [(True, 0), (False, 1)])
def test_cpu_threads_auto_counts_only_decoding_worker_processes(synth_root, tmp_path, capsys, monkeypatch,
                                                                use_cache, processes):
    # A full cache is served by gather threads (a memory copy): they must not take torch's cores.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "busy_elsewhere", lambda: 0.0)  # an idle host, whatever this one runs
    before = torch.get_num_threads()
    try:
        run_training(tiny_config(synth_root, tmp_path / "run", training__epochs=1, training__max_steps=1,
                                 training__num_workers=1, dataset__use_cache=use_cache, backend__cpu_threads="auto",
                                 model={"type": "fixtures_custom_model:TinyNet", "width": 4}))
        cores = usable_cores()
        assert f"(auto: {cores} usable cores - {processes} loader worker processes)" in capsys.readouterr().out
        assert torch.get_num_threads() == max(1, cores - processes)
    finally:
        torch.set_num_threads(before)


def test_compile_path_on_a_tiny_model(synth_root, tmp_path, capsys):
    summary = run_training(tiny_config(synth_root, tmp_path / "run", training__epochs=1, training__max_steps=2,
                                       model={"type": "fixtures_custom_model:TinyNet", "width": 4},
                                       backend__compile=True))
    assert re.search(r"precision .* compile on \(default\)", capsys.readouterr().out)
    assert summary.status == "max_steps"
    state = torch.load(tmp_path / "run" / "checkpoints" / "epoch_0001_batch_000002.pth", weights_only=True)
    assert not any("_orig_mod" in k for k in state["model"])


def test_custom_model_by_import_path_trains(synth_root, tmp_path):
    out = tmp_path / "run"
    summary = run_training(tiny_config(synth_root, out, training__epochs=1,
                                       model={"type": "fixtures_custom_model:TinyNet", "width": 6}))
    assert summary.status == "completed"
    weights = torch.load(out / "best_model.pth", weights_only=True)["model"]
    assert weights["backbone.0.weight"].shape[0] == 6


def test_nan_guard_stops_and_names_the_step(synth_root, tmp_path):
    cfg = tiny_config(synth_root, tmp_path / "run", training__epochs=2, training__log_interval=1,
                      model={"type": "fixtures_custom_model:NanAfter", "bad_call": 3})
    with pytest.raises(NonFiniteLossError, match="optimizer step 3"):
        run_training(cfg)
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []
    assert sampler_threads() == []  # stopped and joined on the exception path too


def test_nan_loss_never_reaches_the_weights(synth_root, tmp_path):
    """Steps 3 and 4 have NaN losses; the flag is read at step 4's log window, and neither update landed."""
    import fixtures_custom_model

    cfg = tiny_config(synth_root, tmp_path / "run", training__epochs=2, training__log_interval=4,
                      training__num_workers=2, model={"type": "fixtures_custom_model:NanAfter", "bad_call": 3})
    with pytest.raises(NonFiniteLossError, match="optimizer step 3") as stopped:
        run_training(cfg)
    # Closed on the error path too, not left to garbage collection (the traceback keeps the loader alive).
    assert loader_threads() == [] and stopped.traceback
    model = fixtures_custom_model.NanAfter.last
    assert model.calls == 4
    assert any(not torch.equal(model.initial[k], model.before_bad[k]) for k in model.initial)  # steps 1-2 trained
    for key, value in model.state_dict().items():
        assert torch.equal(value, model.before_bad[key]), key


@pytest.mark.parametrize("model, message", [
    ({"backbone": "resnet999"}, "resnet999"),
    ({"backbone": "resnet18", "backbone_weights": "missing_weights.pth"}, "missing_weights.pth"),
    ({"type": "fixtures_custom_model:NoSuchNet"}, "NoSuchNet"),
])
def test_model_config_errors_stop_the_run_before_any_data_work(synth_root, tmp_path, model, message):
    out = tmp_path / "run"
    if "backbone_weights" in model:
        model = {**model, "backbone_weights": str(tmp_path / model["backbone_weights"])}
    cfg = tiny_config(synth_root, out, model=model)
    with pytest.raises(ConfigError, match=message):
        run_training(cfg)
    assert not cfg.dataset.cache_dir.exists() and not out.exists()


def test_resume_errors_are_clear(synth_root, tmp_path, deeplab_run):
    good = deeplab_run
    ckpt = good / "best_model.pth"
    # a fresh run must not rotate away another run's checkpoints
    with pytest.raises(DistSegError, match="already holds checkpoints of an earlier run"):
        run_training(tiny_config(synth_root, good, training__epochs=1, dataset__split__test=["Video_002"]))
    assert (good / "checkpoints" / "epoch_0001.pth").is_file()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        run_training(tiny_config(synth_root, tmp_path / "a", training__resume_from_checkpoint=str(truncated)))
    with pytest.raises(CheckpointError, match="does not fit the configured model"):
        run_training(tiny_config(synth_root, tmp_path / "b", training__resume_from_checkpoint=str(ckpt),
                                 model__backbone="resnet34"))


def test_predict_round_trip(synth_root, tmp_path, deeplab_run):
    out = deeplab_run
    pred_dir = tmp_path / "pred"
    sequence = synth_root / "Images" / "Video_003"
    assert predict_main(["--checkpoint", str(out / "best_model.pth"), str(sequence), "--out", str(pred_dir),
                         "--device", "cpu"]) == 0
    frames = sorted(sequence.glob("*.png"))
    written = sorted((pred_dir / "Video_003").glob("*_ids.png"))
    assert len(written) == len(frames)
    assert len(list((pred_dir / "Video_003").glob("*_overlay.png"))) == len(frames)

    # The ids written equal the model's own argmax on the same input.
    state = torch.load(out / "best_model.pth", weights_only=True)
    cfg = tiny_config(synth_root, out)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    model.load_state_dict(state["model"])
    model.eval()
    prep = BatchPreparer(torch.device("cpu"), torch.contiguous_format, (48, 64))
    image = torch.from_numpy(np.array(Image.open(frames[0]).convert("RGB"))).permute(2, 0, 1).unsqueeze(0)
    x, _ = prep.eval_batch(image, torch.zeros(1, 48, 64, dtype=torch.uint8))
    with torch.no_grad():
        expected = model(x)["out"].argmax(1)[0].numpy().astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(written[0])), expected)
    color = np.asarray(Image.open(pred_dir / "Video_003" / f"{frames[0].stem}_color.png"))
    assert color.shape == (48, 64, 3)


def test_train_cli_reports_config_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  root: data\ntraining:\n  output_dir: out\n  bach_size: 4\n")
    proc = subprocess.run([PYTHON, "-m", "dist_seg.train", str(bad)], capture_output=True, text=True,
                          env=subprocess_env(), cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 1
    assert "training.bach_size: unknown key; did you mean training.batch_size?" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("call, checkpoint, batches", [(4, "epoch_0001_batch_000004.pth", [4]),
                                                       (6, "epoch_0001.pth", [])])
def test_sigterm_checkpoints_at_the_next_step(synth_root, tmp_path, capsys, call, checkpoint, batches):
    """SIGTERM mid-epoch saves a mid-epoch checkpoint; on an epoch's last step the epoch is finished first."""
    out = tmp_path / "run"
    model = {"type": "fixtures_custom_model:SignalAt", "call": call}
    summary = run_training(tiny_config(synth_root, out, model=model))
    assert summary.status == "preempted"
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")] == [checkpoint]
    assert [c.step for c in list_checkpoints(out / "checkpoints") if c.step] == batches
    if batches:  # the name says what the log says
        stop = re.search(r"stopped on SIGTERM at epoch (\d+), batch (\d+)", capsys.readouterr().out)
        assert checkpoint == f"epoch_{int(stop.group(1)):04d}_batch_{int(stop.group(2)):06d}.pth"
    resumed = run_training(tiny_config(synth_root, out, model={**model, "call": 10**6},
                                       training__resume_from_checkpoint="auto"))
    assert resumed.status == "completed" and resumed.epochs_completed == 2
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == [1, 2]
    # the mid-epoch checkpoint went once its epoch's checkpoint existed
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")] == ["epoch_0001.pth", "epoch_0002.pth"]


def test_sigterm_during_validation_stops_after_the_current_batch(synth_root, tmp_path, capsys):
    """Validation of 8 one-frame batches: the signal at the first one stops the run there, not 7 batches later."""
    from fixtures_custom_model import SignalInValidation

    SignalInValidation.eval_calls = 0
    out = tmp_path / "run"
    summary = run_training(tiny_config(synth_root, out, model={"type": "fixtures_custom_model:SignalInValidation"},
                                       training__val_batch_size=1))
    assert summary.status == "preempted" and summary.epochs_completed == 1
    assert SignalInValidation.eval_calls == 1  # no further validation batch, no visualisation
    log = capsys.readouterr().out
    assert "validation stopped by a preemption signal" in log
    assert "stopped on SIGTERM at epoch 2, batch 0" in log
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")] == ["epoch_0001.pth"]
    history = json.loads((out / "history.json").read_text())
    assert [(r["epoch"], r["val_mIoU"]) for r in history] == [(1, None)]


def test_sigterm_during_the_cache_build_stops_cleanly(synth_root, tmp_path, capsys, monkeypatch):
    """The signal lands while frames are decoded: no temporaries stay behind, and a rerun builds the rest."""
    import os
    import signal

    import dist_seg.data.cache as cache

    decode, decoded = cache._decode_for_cache, []

    def decode_then_signal(*args, **kwargs):  # the real decode; the signal arrives mid-build, at the third frame
        decoded.append(1)
        if len(decoded) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return decode(*args, **kwargs)

    monkeypatch.setattr(cache, "_decode_for_cache", decode_then_signal)
    out = tmp_path / "run"
    # The signal lands in the cache build, before any model runs: TinyNet keeps the run that follows short.
    cfg = tiny_config(synth_root, out, dataset__cache_workers=1, training__max_steps=1, model=TINY_NET)
    summary = run_training(cfg)
    assert summary.status == "preempted" and summary.global_step == 0
    assert len(decoded) == 3  # stopped at once, not after the other 29 frames
    assert "stopped on SIGTERM while preparing the data" in capsys.readouterr().out
    cache_dir = Path(cfg.dataset.cache_dir)
    assert [p for p in cache_dir.rglob("*") if p.name.endswith(".tmp")] == []
    assert not list(cache_dir.rglob("manifest.json"))
    monkeypatch.setattr(cache, "_decode_for_cache", decode)
    assert run_training(cfg).status == "max_steps"
