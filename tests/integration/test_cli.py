"""The dist-seg console script's dispatch and predict's input expansion."""

from __future__ import annotations

import pytest

from dist_seg.cli import main as cli_main
from dist_seg.errors import DataError
from dist_seg.predict import collect_inputs


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
