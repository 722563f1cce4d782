"""The commands predict, evaluate and export refuse bad output folders before any work, name
the option the user gave (--checkpoint, --device, --cache-dir), and survive full disks and killed exports.

The commands run in-process through their ``main`` (exit status and stderr as a user sees them),
except where the failure before the fix killed the process (a SIGBUS), which runs in a child.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from support.helpers import PYTHON, REPO_ROOT, save_model_checkpoint, subprocess_env, tiny_raw_config
from support.tmpfs import small_tmpfs

from dist_seg import atomic
from dist_seg.config import config_from_dict
from dist_seg.errors import DiskSpaceError
from dist_seg.evaluate import main as evaluate_main
from dist_seg.export import main as export_main
from dist_seg.models import build_model
from dist_seg.predict import main as predict_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(synth_root, tmp_path_factory) -> Path:
    """A real checkpoint of an untrained two-conv TinyNet (its config points at the synthetic dataset)."""
    base = tmp_path_factory.mktemp("cli")
    raw = tiny_raw_config(synth_root, base / "run")
    raw["model"] = {"type": TINY}
    cfg = config_from_dict(raw)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    return save_model_checkpoint(model, cfg, base / "run" / "checkpoints", global_step=8)


TINY = "fixtures_custom_model:TinyNet"


def predict(checkpoint: Path, synth_root: Path, out: Path, *extra: str) -> int:
    frame = sorted((synth_root / "Images" / "Video_000").iterdir())[0]
    return predict_main(["--checkpoint", str(checkpoint), str(frame), "--out", str(out), "--device", "cpu",
                         "--custom-model", TINY, *extra])


def evaluate(checkpoint: Path, synth_root: Path, out: Path, *extra: str) -> int:
    return evaluate_main(["--checkpoint", str(checkpoint), "--root", str(synth_root), "--out", str(out),
                          "--device", "cpu", "--workers", "0", "--custom-model", TINY, *extra])


def export(checkpoint: Path, _synth_root: Path, out: Path, *extra: str) -> int:
    return export_main(["--checkpoint", str(checkpoint), "--format", "torch-export", "--no-check", "--out", str(out),
                        "--custom-model", TINY, *extra])


COMMANDS: dict[str, Callable[..., int]] = {"predict": predict, "evaluate": evaluate, "export": export}


def error_line(capsys, work_line: str = "") -> str:
    """The command's stderr, which must be one ``error:`` line (no traceback); stdout must not hold ``work_line``."""
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not work_line or work_line not in captured.out, captured.out
    return err


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """An empty read-only mount at ``folder`` (root ignores chmod); skipped where mount is not permitted."""
    with small_tmpfs(folder, size="1M,ro"):  # the mount options ride on the size argument
        yield folder


# ----------------------------------------------------------------------------- --out


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_that_is_or_is_under_a_file_is_refused_before_any_work(checkpoint, synth_root, tmp_path, capsys,
                                                                  command, where):
    blocker = tmp_path / "somefile"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "sub"
    assert COMMANDS[command](checkpoint, synth_root, out) == 1
    err = error_line(capsys, work_line=f"{command}:")  # evaluate and export log a line when their work starts
    assert "--out" in err and str(out) in err
    assert ("is a file" in err) if where == "file" else f"cannot write to {out} ({blocker} is a file" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_out_is_refused_before_any_work(checkpoint, synth_root, tmp_path, capsys, command):
    with read_only_folder(tmp_path / "ro") as out:
        assert COMMANDS[command](checkpoint, synth_root, out) == 1
    err = error_line(capsys)
    assert f"error: --out: cannot write to {out} (Read-only file system)" in err


def test_evaluate_default_report_folder_is_checked_before_the_evaluation(checkpoint, synth_root, tmp_path, capsys):
    """Without --out the report goes to eval/<name> in the run folder of the checkpoint: a file in the way is found first."""
    run = checkpoint.parent.parent
    (run / "eval").write_text("in the way")
    try:
        code = evaluate_main(["--checkpoint", str(checkpoint), "--root", str(synth_root), "--device", "cpu",
                              "--workers", "0", "--custom-model", TINY])
    finally:
        (run / "eval").unlink()
    assert code == 1
    err = error_line(capsys)
    assert f"--out (default {run / 'eval' / synth_root.name}): cannot write to" in err


# ----------------------------------------------------------------------------- the option named


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_checkpoint_names_the_option(synth_root, tmp_path, capsys, command):
    missing = tmp_path / "nope.pth"
    assert COMMANDS[command](missing, synth_root, tmp_path / "out") == 1
    err = error_line(capsys)
    assert "--checkpoint" in err and str(missing) in err and "resume_from_checkpoint" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_device_cuda_without_a_gpu_names_the_option(checkpoint, synth_root, tmp_path, capsys, command):
    assert COMMANDS[command](checkpoint, synth_root, tmp_path / "out", "--device", "cuda") == 1
    err = error_line(capsys)
    assert "--device 'cuda' asked for a GPU but torch sees none" in err and "set --device to cpu" in err
    assert "backend.target" not in err


def test_unwritable_cache_dir_names_the_option(checkpoint, synth_root, tmp_path, capsys):
    blocker = tmp_path / "cachefile"
    blocker.write_text("x")
    assert evaluate(checkpoint, synth_root, tmp_path / "out", "--cache-dir", str(blocker)) == 1
    err = error_line(capsys)
    assert f"error: --cache-dir: {blocker} is a file" in err and "dataset.cache_dir" not in err


# ----------------------------------------------------------------------------- full disks, killed runs


def dead_pid() -> int:
    """The PID of a process that has ended (what a killed writer's temporary names carry)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _fill(folder: Path, leave: int) -> None:
    """Fill the filesystem holding ``folder`` up to ``leave`` free bytes."""
    (folder / "filler").write_bytes(b"\0" * max(0, shutil.disk_usage(folder).free - leave))


def test_full_disk_during_torch_export_save_is_one_line_and_leaves_nothing(checkpoint, synth_root, tmp_path, capsys):
    with small_tmpfs(tmp_path / "disk") as disk:
        out = disk / "export"
        out.mkdir()
        _fill(disk, 16 * 1024)
        assert export(checkpoint, synth_root, out) == 1
        err = error_line(capsys)
        assert f"error: no space left on the device holding {out} while writing model.pt2" in err
        assert sorted(p.name for p in out.iterdir()) == []  # no staging folder, no artifact


def test_export_whose_model_card_cannot_be_written_publishes_nothing(checkpoint, synth_root, tmp_path, capsys,
                                                                    monkeypatch):
    def disk_full(path, _obj):
        raise DiskSpaceError(f"no space left on the device holding {Path(path).parent} while writing model.json")

    monkeypatch.setattr(atomic, "write_json", disk_full)
    out = tmp_path / "export"
    assert export(checkpoint, synth_root, out) == 1
    assert "while writing model.json" in error_line(capsys)
    assert list(out.iterdir()) == []  # no model.pt2 without its card


def test_export_removes_the_staging_folder_of_a_killed_export(checkpoint, synth_root, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    with atomic.staging_folder(out / "model.pt2") as ours:  # the name a killed export's folder has, but its PID
        stale = ours.with_name(ours.name.replace(f"-{os.getpid()}.", f"-{dead_pid()}."))
        shutil.copytree(ours, stale)
        (stale / "model.pt2").write_bytes(b"\0" * 1000)
    assert export(checkpoint, synth_root, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.pt2"]


def test_evaluate_native_masks_on_a_full_disk_is_one_line_not_sigbus(checkpoint, synth_root, tmp_path):
    with small_tmpfs(tmp_path / "disk") as disk:
        _fill(disk, 8 * 1024)  # less than one sequence's masks (8 frames of 48x64)
        proc = subprocess.run([PYTHON, "-m", "dist_seg.evaluate", "--checkpoint", str(checkpoint), "--root",
                               str(synth_root), "--out", str(tmp_path / "report"), "--cache-dir", str(disk / "cache"),
                               "--device", "cpu", "--workers", "0", "--custom-model", TINY],
                              capture_output=True, text=True, cwd=REPO_ROOT, env=subprocess_env(), timeout=300)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    # The free-space check before the write names the option that chose the folder.
    assert last.startswith("error: the native mask cache (--cache-dir) needs ") and "MiB are free" in last, proc.stderr


def test_predict_removes_temporaries_a_killed_run_left_in_its_out(checkpoint, synth_root, tmp_path):
    out = tmp_path / "pred"  # a single frame's outputs go straight into --out
    out.mkdir()
    left = atomic.temporary_name(out / "video_000_0000_ids.png", "x")
    left = left.with_name(left.name.replace(f"-{os.getpid()}.", f"-{dead_pid()}."))
    left.write_bytes(b"half a png")
    assert predict(checkpoint, synth_root, out) == 0
    assert not left.exists() and not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- prepare, option combinations


def test_prepare_refuses_an_output_dir_that_is_a_file_before_the_cache_build(synth_root, tmp_path, capsys):
    import yaml

    from dist_seg.prepare import main as prepare_main

    (tmp_path / "run").write_text("not a folder")
    raw = tiny_raw_config(synth_root, tmp_path / "run")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert prepare_main([str(config)]) == 1
    err = error_line(capsys, work_line="cache:")
    assert f"error: training.output_dir: {tmp_path / 'run'} is a file, not a folder" in err
    assert not (tmp_path / "run_cache").exists()


@pytest.mark.parametrize("options", [["--tta", "flip"], ["--mode", "slide"]])
def test_predict_with_an_onnx_model_refuses_tta_and_slide_before_loading(synth_root, tmp_path, capsys, options):
    frame = sorted((synth_root / "Images" / "Video_000").iterdir())[0]
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--model", str(tmp_path / "model.onnx"), str(frame), "--out", str(tmp_path / "out"), *options])
    assert exit_info.value.code == 2
    assert "--tta and --mode slide need the PyTorch model" in capsys.readouterr().err


def test_evaluate_root_without_frames_names_the_option(checkpoint, tmp_path, capsys):
    assert evaluate(checkpoint, tmp_path / "nowhere", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "image folder does not exist" in err and f"check --root ({tmp_path / 'nowhere'})" in err
    assert "dataset.root" not in err
