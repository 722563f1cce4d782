"""The dist-seg console script's dispatch and help, and predict's input expansion and output checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dist_seg.cli import SUBCOMMANDS
from dist_seg.cli import main as cli_main
from dist_seg.errors import DataError
from dist_seg.predict import check_outputs, collect_inputs
from dist_seg.predict import main as predict_main


def test_console_script_dispatches_subcommands(tmp_path, capsys):
    assert cli_main(["synth", str(tmp_path / "d"), "--sequences", "1", "--frames", "2", "--size", "32x48"]) == 0
    assert len(list((tmp_path / "d" / "Labels" / "Video_000").glob("*.png"))) == 2
    assert cli_main(["trian"]) == 2
    assert "unknown subcommand 'trian'" in capsys.readouterr().err


def test_predict_expands_files_sequences_and_dataset_roots(synth_root, tmp_path):
    seq = synth_root / "Images" / "Video_001"
    one = sorted(seq.glob("*.png"))[0]
    jobs = collect_inputs([str(synth_root), str(seq), str(one)])
    per_root = 4 * 8
    # the sequence folder repeats frames of the root (same output folder: de-duplicated); the single
    # file goes to the top of --out, a different place, so it is a job of its own
    assert len(jobs) == per_root + 1
    assert {str(j.relative_dir) for j in jobs} == {"Video_000", "Video_001", "Video_002", "Video_003", "."}
    with pytest.raises(DataError, match="does not exist"):
        collect_inputs([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .png/.jpg images"):
        collect_inputs([str(tmp_path / "empty")])


def write_image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), value, dtype=np.uint8)).save(path)
    return path


def test_predict_refuses_inputs_whose_outputs_collide_before_loading_anything(tmp_path, capsys):
    a = write_image(tmp_path / "a" / "frame.png")
    b = write_image(tmp_path / "b" / "frame.png")
    jpg = write_image(tmp_path / "a" / "frame.jpg")
    with pytest.raises(DataError, match=r"1 output name\(s\) would be written by more than one input") as exc:
        check_outputs(collect_inputs([str(a), str(b)]), tmp_path / "out")
    assert str(a) in str(exc.value) and str(b) in str(exc.value)
    with pytest.raises(DataError, match="same file stem in the same output folder"):
        check_outputs(collect_inputs([str(tmp_path / "a")]), tmp_path / "out")  # frame.png and frame.jpg
    jpg.unlink()
    check_outputs(collect_inputs([str(a), str(tmp_path / "a" / "." / "frame.png")]), tmp_path / "out")  # same file

    # The check runs before the checkpoint is even looked at (this one does not exist).
    missing = str(tmp_path / "no.pth")
    assert predict_main(["--checkpoint", missing, str(a), str(b), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "would be written by more than one input" in err and "no.pth" not in err
    assert not (tmp_path / "out").exists()


def test_predict_refuses_an_out_among_the_inputs_or_a_file(tmp_path, capsys):
    root = tmp_path / "data"
    seq = root / "Images" / "Video_000"
    for i in range(2):
        write_image(seq / f"f{i}.png", i)
    jobs = collect_inputs([str(seq)])
    # Video_000 inputs go to OUT/Video_000: with OUT = .../Images that is the input folder itself.
    for out in (root / "Images", root / "Images" / "elsewhere" / ".."):
        with pytest.raises(DataError, match="which holds input images"):
            check_outputs(jobs, out)
    with pytest.raises(DataError, match="which holds input images"):
        check_outputs(collect_inputs([str(seq / "f0.png")]), seq)  # next to the input file
    with pytest.raises(DataError, match="which holds input images"):
        check_outputs(collect_inputs([str(root)]), root / "Images")  # a dataset root's sequences
    check_outputs(jobs, seq)  # OUT/Video_000 is a new subfolder the folder listing does not read
    check_outputs(collect_inputs([str(root)]), root / "predictions")

    a_file = write_image(tmp_path / "taken.png")
    assert predict_main(["--checkpoint", str(tmp_path / "no.pth"), str(seq), "--out", str(a_file)]) == 1
    assert "is a file; pass a directory" in capsys.readouterr().err


def test_console_script_help_lists_every_subcommand_with_a_description(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "prepare", "validate", "synth", "predict", "evaluate", "export", "gpu-proc-sampler"):
        assert name in SUBCOMMANDS
        line = next(line for line in out.splitlines() if line.split()[:1] == [name])
        assert len(line.split()) > 2, f"{name} has no description"
    assert cli_main([]) == 2
    assert "usage: dist-seg" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_answers_help(name, capsys):
    module_name = SUBCOMMANDS[name].module
    pytest.importorskip(module_name, reason=f"{module_name} is not in this tree yet")
    with pytest.raises(SystemExit) as exc:
        cli_main([name, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out
