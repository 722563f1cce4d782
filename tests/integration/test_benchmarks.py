"""benchmarks/: every suite runs on tiny settings and writes well-formed results (no timing thresholds)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

# benchmarks/ is not an installed package: import it from the repository root, however pytest was started.
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import profile_loader, run  # noqa: E402
from benchmarks.suites import DEFAULT_SUITES  # noqa: E402

pytestmark = pytest.mark.slow

RECORD_FIELDS = {"suite", "variant", "metric", "unit", "images_per_s", "median", "min", "max", "repeats", "values",
                 "device", "device_type", "cores", "torch", "settings", "derived"}
# Derived values each suite must report on at least one of its records.
DERIVED = {
    "loader": {"per_core_samples_per_s", "vs_decode_same_workers", "vs_plain_copy_floor", "at_least_20x_decode",
               "within_2x_of_floor", "vs_host_cache_best", "data_wait_frac", "vs_full_cache_same_workers",
               "store_requests"},
    "step": {"speedup_vs_eager_fp32", "forward_ms", "backward_ms", "optimizer_ms", "gflop_per_image",
             "fraction_of_matmul_peak"},
    "e2e": {"data_wait_frac_median", "speedup_vs_cache_off", "speedup_vs_1_thread"},
    "ddp": {"scaling_efficiency", "global_images_per_s"},
    "vram": {"overhead_percent", "samples_taken"},
    "memory": {"pss_mb", "uss_mb", "uss_growth_mb", "private_dirty_growth_mb", "cache_growth_mb",
               "batch_buffers_mb", "batch_buffers_growth_mb"},
}
VARIANTS = {
    "loader": {"decode, 0 workers", "mask cache, 1 worker", "full cache, 1 worker", "full cache on device",
               "floor: plain copy", "floor: fresh shared copy", "streaming cold, 1 worker", "streaming warm, 0 workers"},
    "e2e": {"cache on", "cache off", "cache on, 1 thread"},
    "ddp": {"1 rank", "2 ranks"},
    "vram": {"sampler off", "sampler on"},
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One generated dataset (and its caches) shared by every suite's run, as in a real benchmark run."""
    return tmp_path_factory.mktemp("bench_scratch")


@pytest.mark.parametrize("suite", list(DEFAULT_SUITES))
def test_suite_runs_tiny_and_writes_well_formed_results(suite, scratch, tmp_path):
    assert run.main(["--tiny", "--suite", suite, "--out", str(tmp_path), "--scratch", str(scratch)]) == 0
    payload = json.loads((tmp_path / "results.json").read_text())
    meta, records = payload["meta"], payload["records"]
    assert meta["suites"] == [suite] and meta["failures"] == [] and meta["preset"] == "tiny"
    assert meta["machine"]["device"] and meta["machine"]["torch"]
    assert records and all(r["suite"] == suite for r in records)
    for r in records:
        assert RECORD_FIELDS <= r.keys()
        assert r["repeats"] == len(r["values"]) >= 1
        assert all(math.isfinite(v) for v in r["values"])
        assert r["min"] <= r["median"] <= r["max"]
        if r["metric"] in ("images_per_s", "samples_per_s"):
            assert r["images_per_s"] == r["median"] > 0
        assert isinstance(r["settings"], dict) and isinstance(r["derived"], dict)
    derived = set().union(*(r["derived"] for r in records))
    assert DERIVED[suite] <= derived
    assert VARIANTS.get(suite, set()) <= {r["variant"] for r in records}
    summary = (tmp_path / "summary.md").read_text()
    assert f"## {suite}:" in summary and meta["command"] in summary


def test_unknown_suite_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        run.main(["--tiny", "--suite", "nope", "--out", str(tmp_path)])


def test_profile_summary_groups_samples_by_process_role(tmp_path):
    raw = tmp_path / "loader.prof"
    raw.write_text(
        'process 1:"python x";<module> (x.py:1);_worker_loop (w.py:2);CachedDataset._fill (d.py:3) 30\n'
        'process 1:"python x";Thread.run (t.py:1);Queue._feed (q.py:2);Condition.wait (c.py:3) 10\n'
        'process 1:"python x";<module> (x.py:1);_BaseDataLoaderIter.__next__ (l.py:5) 60\n')
    text = profile_loader.summarize(raw, top=3)
    assert text.startswith("100 samples")
    assert "worker: main thread: 30 samples (30% of all)" in text
    assert "worker: queue feeder thread: 10 samples" in text and "main process: 60 samples" in text
    assert "100.0%  <module> > _worker_loop > CachedDataset._fill" in text


def test_profile_summary_names_the_gather_threads(tmp_path):
    raw = tmp_path / "loader.prof"
    raw.write_text(
        'process 1:"python x";Thread.run (t.py:1);_WorkItem.run (f.py:2);CacheLoader.gather (c.py:3) 40\n'
        'process 1:"python x";<module> (x.py:1);CacheLoader._ahead (c.py:4) 10\n')
    text = profile_loader.summarize(raw, top=3)
    assert "main: gather thread: 40 samples (80% of all)" in text and "main process: 10 samples" in text
