"""The standalone per-process sampler: CSV contents with fake drivers, Ctrl-C, and no-GPU exit."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import psutil
import pytest
from support.fakes.amdsmi_fake import FakeAmdGpu, make_amdsmi
from support.fakes.pynvml_fake import NVML_ERROR_LIBRARY_NOT_FOUND, FakeNvmlGpu, make_pynvml

from dist_seg.telemetry import gpu_proc_sampler
from dist_seg.telemetry.gpu_proc_sampler import COLUMNS, main

OWN = os.getpid()
GONE = 4_000_000  # above Linux's pid_max: never a live process


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def test_nvml_rows_per_process_per_gpu_per_sample(monkeypatch, tmp_path):
    gpus = [
        FakeNvmlGpu("GPU-aaa", "00000000:1A:00.0", used_mb=2_000, processes=[(OWN, 1_500), (GONE, None)]),
        FakeNvmlGpu("GPU-bbb", "00000000:3B:00.0"),  # idle: no rows
        FakeNvmlGpu("GPU-ccc", "00000000:5C:00.0", used_mb=700, processes=[(OWN, 600)]),
    ]
    mod = make_pynvml(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    out = tmp_path / "gpu_proc_usage.csv"

    assert main(["--duration", "0.03", "--interval", "0.01", "--out", str(out)]) == 0

    rows = read_rows(out)
    assert len(rows) == 3 * 3  # 3 samples x 3 processes
    assert len({r["timestamp"] for r in rows}) <= 3
    first = rows[:3]
    assert [(r["gpu_index"], r["gpu_uuid"], r["pid"], r["used_mb"]) for r in first] == [
        ("0", "GPU-aaa", str(OWN), "1500.0"), ("0", "GPU-aaa", str(GONE), ""), ("2", "GPU-ccc", str(OWN), "600.0")]
    assert first[0]["process_name"] == psutil.Process().name()
    assert first[1]["process_name"] == "unknown"
    assert (first[0]["device_used_mb"], first[0]["device_total_mb"]) == ("2000.0", "81559.0")
    assert mod.init_count == 0


def test_auto_falls_back_to_amdsmi(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    amd = [FakeAmdGpu("amd-u0", "0000:03:00.0", vram_used_mb=900, processes=[(OWN, 800)])]
    monkeypatch.setitem(sys.modules, "amdsmi", make_amdsmi(amd, api="old"))
    out = tmp_path / "amd.csv"

    assert main(["--duration", "0.01", "--interval", "0.01", "--out", str(out)]) == 0
    rows = read_rows(out)
    assert [(r["gpu_index"], r["gpu_uuid"], r["pid"], r["used_mb"], r["device_used_mb"]) for r in rows] == [
        ("0", "amd-u0", str(OWN), "800.0", "900.0")]
    assert "(amdsmi)" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_with_whole_samples_on_disk(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml([FakeNvmlGpu("GPU-a", "0:1:0.0", processes=[(OWN, 5)])]))
    out = tmp_path / "live.csv"
    seen_while_running: list[list[dict[str, str]]] = []
    real_sleep = gpu_proc_sampler.time.sleep

    def sleep(seconds):
        seen_while_running.append(read_rows(out))  # what a reader sees mid-run
        if len(seen_while_running) == 3:
            raise KeyboardInterrupt
        real_sleep(0)

    monkeypatch.setattr(gpu_proc_sampler.time, "sleep", sleep)
    assert main(["--duration", "0", "--interval", "0.01", "--out", str(out)]) == 0  # 0 = until Ctrl-C

    assert [len(rows) for rows in seen_while_running] == [0, 1, 2]  # flushed sample by sample
    assert len(read_rows(out)) == 2


def test_no_devices_is_exit_1(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml([]))
    assert main(["--backend", "nvml", "--out", str(tmp_path / "x.csv")]) == 1
    assert "nvml sees no GPU" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_bad_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--interval", "0"])
    assert exc.value.code == 2


def real_nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


@pytest.mark.skipif(real_nvml_works(), reason="this machine has an NVIDIA GPU")
def test_subprocess_without_gpu_says_why_and_exits_1(tmp_path):
    out = tmp_path / "none.csv"
    proc = subprocess.run([sys.executable, "-m", "dist_seg.telemetry.gpu_proc_sampler", "--duration", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 1, proc.stderr
    assert "no GPU library is usable" in proc.stderr
    assert "nvml:" in proc.stderr and "amdsmi:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
