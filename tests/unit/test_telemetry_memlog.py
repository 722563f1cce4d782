"""memory_diagnostics.log: the original line format, appended by several writers, and the peak summary."""

from __future__ import annotations

import re
import threading

from dist_seg.telemetry.memlog import MemoryLog, format_sample
from dist_seg.telemetry.vram import PeakSummary, VramSample

# The original pipeline's text, which users grep for, followed by the new figures.
LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} "
    r"VRAM: (?P<alloc>[\d.]+|n/a) MB \(alloc\), (?P<reserved>[\d.]+|n/a) MB \(reserved\), "
    r"(?P<free>[\d.]+|n/a) MB free / (?P<total>[\d.]+|n/a) MB total"
    r" \| process (?P<process>[\d.]+|n/a) MB, non-torch (?P<non_torch>-?[\d.]+|n/a) MB, "
    r"device used (?P<used>[\d.]+|n/a) MB, peak alloc (?:[\d.]+|n/a) MB, host RSS [\d.]+ MB"
    r" \| source (?P<source>\w+).*\| rank (?P<rank>\d+), step (?P<step>\d+)$"
)


def sample(rank=0, step=12, **overrides) -> VramSample:
    values = dict(time=1_700_000_000.25, step=step, rank=rank, device_index=0, device_uuid="GPU-x", source="nvml",
                  pid_visible=True, process_mb=1500.0, device_used_mb=2600.0, device_total_mb=81559.0,
                  allocated_mb=800.0, reserved_mb=1024.0, max_allocated_mb=900.0, non_torch_mb=476.0,
                  host_rss_mb=2100.0)
    values.update(overrides)
    return VramSample(**values)


def test_line_keeps_the_original_vram_format_and_adds_driver_figures():
    match = LINE.match(format_sample(sample(rank=3, step=12)))
    assert match, format_sample(sample())
    assert match.group("alloc", "reserved", "free", "total") == ("800.0", "1024.0", "78959.0", "81559.0")
    assert match.group("process", "non_torch", "used", "source", "rank", "step") == (
        "1500.0", "476.0", "2600.0", "nvml", "3", "12")


def test_unknown_figures_and_container_fallback_are_spelled_out():
    line = format_sample(sample(process_mb=None, pid_visible=False))
    assert LINE.match(line) and "process n/a MB" in line and "own PID not visible: device-level" in line
    cpu = format_sample(sample(source="none", pid_visible=False, process_mb=None, device_used_mb=None,
                               device_total_mb=None, allocated_mb=None, reserved_mb=None, max_allocated_mb=None,
                               non_torch_mb=None))
    # Without any GPU figure (a CPU rank) the line is the host's only (tests/unit/test_memlog_host_only.py).
    assert cpu.endswith(" host RSS: 2100.0 MB | rank 0, step 12")


def test_ranks_append_whole_lines_to_one_file_and_summaries(tmp_path):
    path = tmp_path / "out" / "memory_diagnostics.log"
    logs = [MemoryLog(path, rank) for rank in range(3)]

    def write(log):
        for step in range(200):
            log(sample(rank=log.rank, step=step))

    threads = [threading.Thread(target=write, args=(log,)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    peaks = PeakSummary(rank=1).update(sample(rank=1, reserved_mb=3000.0)).update(sample(rank=1, reserved_mb=1000.0))
    logs[1].write_summary(peaks)

    lines = path.read_text().splitlines()
    assert len(lines) == 601
    assert all(LINE.match(line) for line in lines[:600])
    for rank in range(3):
        steps = [int(m.group("step")) for m in map(LINE.match, lines[:600]) if m.group("rank") == str(rank)]
        assert steps == list(range(200))
    assert "VRAM PEAKS rank 1 over 2 samples: 900.0 MB (alloc), 3000.0 MB (reserved)" in lines[-1]


def test_reopening_appends(tmp_path):
    path = tmp_path / "memory_diagnostics.log"
    for step in (1, 2):
        MemoryLog(path, 0)(sample(step=step))
    assert [LINE.match(line).group("step") for line in path.read_text().splitlines()] == ["1", "2"]
