"""``backend.cpu_threads: auto`` on a busy host: cores kept busy by other processes are not given to torch."""

from __future__ import annotations

from dist_seg.runtime.threads import choose_cpu_threads


def test_busy_cores_reduce_the_threads_and_the_reason_says_so():
    choice = choose_cpu_threads("auto", loader_processes=0, env={}, load=1.6, cores=2)
    assert choice.threads == 1
    assert choice.describe() == (
        "1 (auto: 2 usable cores - 0 loader worker processes; reduced from 2: 1.6 threads of other processes "
        "running on 2 usable cores leave ~1 idle, and oversubscribed threads run several times slower; set "
        "backend.cpu_threads to choose)")


def test_a_saturated_host_still_gets_one_thread_and_an_idle_one_all_cores():
    assert choose_cpu_threads("auto", loader_processes=0, env={}, load=7.0, cores=2).threads == 1
    idle = choose_cpu_threads("auto", loader_processes=0, env={}, load=0.3, cores=8)
    assert idle.threads == 8 and "reduced" not in idle.reason
    # An explicit number is the user's: no load check.
    assert choose_cpu_threads(2, loader_processes=0, env={}, load=7.0, cores=2).threads == 2


def test_busy_elsewhere_counts_threads_running_now_not_a_past_average(tmp_path):
    """A busy-looping child process is counted while it runs; the reading thread itself is not."""
    import subprocess
    import sys

    from dist_seg.runtime.threads import busy_elsewhere

    quiet = busy_elsewhere(samples=5, interval_s=0.01)
    if quiet is None:
        import pytest
        pytest.skip("no /proc/loadavg on this system")
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        import time
        time.sleep(0.5)  # the interpreter is up and spinning
        assert busy_elsewhere(samples=9, interval_s=0.02) >= 1
    finally:
        spinner.kill()
        spinner.wait()
