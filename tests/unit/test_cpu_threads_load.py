"""``backend.cpu_threads: auto`` on a busy host: cores kept busy by other processes are not given to torch."""

from __future__ import annotations

from dist_seg.runtime.threads import choose_cpu_threads


def test_busy_cores_reduce_the_threads_and_the_reason_says_so():
    choice = choose_cpu_threads("auto", loader_processes=0, env={}, load=1.6, cores=2)
    assert choice.threads == 1
    assert choice.describe() == (
        "1 (auto: 2 usable cores - 0 loader worker processes; reduced from 2: load average 1.6 on 2 usable cores "
        "leaves ~1 idle, and oversubscribed threads run several times slower; set backend.cpu_threads to choose)")


def test_a_saturated_host_still_gets_one_thread_and_an_idle_one_all_cores():
    assert choose_cpu_threads("auto", loader_processes=0, env={}, load=7.0, cores=2).threads == 1
    idle = choose_cpu_threads("auto", loader_processes=0, env={}, load=0.3, cores=8)
    assert idle.threads == 8 and "reduced" not in idle.reason
    # An explicit number is the user's: no load check.
    assert choose_cpu_threads(2, loader_processes=0, env={}, load=7.0, cores=2).threads == 2
