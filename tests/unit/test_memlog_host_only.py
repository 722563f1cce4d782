"""memory_diagnostics.log on a CPU: host RSS lines, one per interval; a size cap that holds across restarts."""

from __future__ import annotations

from dist_seg.telemetry.memlog import MemoryLog, format_sample
from dist_seg.telemetry.vram import VramSample


def cpu_sample(t: float, step: int = 3) -> VramSample:
    return VramSample(time=1_700_000_000.0 + t, step=step, rank=0, device_index=None, device_uuid=None,
                      source="none", pid_visible=False, process_mb=None, device_used_mb=None, device_total_mb=None,
                      allocated_mb=None, reserved_mb=None, max_allocated_mb=None, non_torch_mb=None,
                      host_rss_mb=2100.0)


def test_cpu_samples_are_host_lines_once_per_interval(tmp_path):
    path = tmp_path / "memory_diagnostics.log"
    log = MemoryLog(path, 0, host_interval_s=60.0)
    for second in range(0, 181):  # a sample a second for three minutes
        log(cpu_sample(second))
    lines = path.read_text().splitlines()
    assert len(lines) == 4  # at 0, 60, 120 and 180 s
    assert all(line.endswith(" host RSS: 2100.0 MB | rank 0, step 3") for line in lines)
    assert "VRAM" not in format_sample(cpu_sample(0)) and "n/a" not in path.read_text()


def test_log_is_capped_across_restarts(tmp_path):
    path = tmp_path / "memory_diagnostics.log"
    path.write_text("x" * 5000)  # an earlier run's log, past the cap
    log = MemoryLog(path, 0, max_bytes=1000, host_interval_s=0.0)
    assert path.with_name("memory_diagnostics.log.1").stat().st_size == 5000 and not path.exists()
    for second in range(40):  # ~70 bytes a line: the cap is passed again while appending
        log(cpu_sample(second))
    assert path.stat().st_size <= 1000 + 100
    assert path.with_name("memory_diagnostics.log.1").stat().st_size <= 1000 + 100
    path.write_text("y" * 50)
    MemoryLog(path, 1, max_bytes=10)  # only rank 0 moves the file: ranks do not race to rename it
    assert path.read_text() == "y" * 50
