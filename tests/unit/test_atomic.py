"""Atomic writes: file modes under the umask, stale temporaries of dead writers, full disks."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch
from support.tmpfs import small_tmpfs

from dist_seg import atomic
from dist_seg.errors import DiskSpaceError


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic.write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600


def test_a_failed_write_leaves_neither_temporary_nor_target(tmp_path):
    with pytest.raises(ValueError):
        with atomic.atomic_open(tmp_path / "c.bin") as fh:
            fh.write(b"partial")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    # A writer killed with SIGKILL mid-write leaves its temporary behind.
    code = ("import os, signal, sys; from dist_seg import atomic\n"
            "with atomic.atomic_open(sys.argv[1]) as fh:\n"
            "    fh.write(b'x' * 1000); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n")
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "epoch_0001.pth")])
        assert proc.returncode == -9
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert len(leftovers) == 3 and all(n.startswith(".epoch_0001.pth.") and n.endswith(".tmp") for n in leftovers)
    foreign = tmp_path / "notes.tmp"  # not of our naming: never touched
    foreign.write_text("keep")
    with atomic.atomic_open(tmp_path / "live.bin") as fh:  # this process is alive: its temporary stays
        fh.write(b"y")
        removed = atomic.remove_stale_temporaries(tmp_path)
        assert len(removed) == 3
        assert any(p.name.startswith(".live.bin.") for p in tmp_path.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.bin", "notes.tmp"]


def test_ensure_free_space_names_folder_and_sizes(tmp_path):
    atomic.ensure_free_space(tmp_path, 1, "a test file")
    with pytest.raises(DiskSpaceError, match=r"a test file needs .* MiB in .* only .* MiB are free"):
        atomic.ensure_free_space(tmp_path, 1 << 62, "a test file")


def test_full_disk_is_a_clear_error_and_leaves_nothing_behind(tmp_path):
    with small_tmpfs(tmp_path / "small", "3M") as small:
        (small / "filler.bin").write_bytes(b"\0" * (2 * 2**20))
        with pytest.raises(DiskSpaceError, match=r"no space left .*small.* while writing big.bin"):
            atomic.write_bytes(small / "big.bin", b"\1" * (2 * 2**20))
        # torch.save reports a full disk as a RuntimeError ("unexpected pos"): the same clear error.
        with pytest.raises(DiskSpaceError, match=r"while writing ckpt.pth"):
            with atomic.atomic_open(small / "ckpt.pth") as fh:
                torch.save({"w": torch.zeros(2**19)}, fh)
        assert sorted(p.name for p in small.iterdir()) == ["filler.bin"]
