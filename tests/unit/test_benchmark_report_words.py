"""The benchmark summary in plain words: input size and units on every row, ratios said as what they are."""

from __future__ import annotations

import json

import torch

from benchmarks import report, run
from benchmarks.common import Machine, Record, Stats
from benchmarks.suites import step

MACHINE = Machine("AMD EPYC", "cpu", "AMD EPYC", 2, "2.x", "3.12")


def test_rows_name_the_input_size_the_units_and_the_ratios_in_words():
    loader = Record("loader", "full cache, 0 workers", "samples_per_s", "samples/s", Stats.of([90.0, 100.0, 110.0]),
                    MACHINE, settings={"image_size": [512, 512]},
                    derived={"vs_plain_copy_floor": 1.27, "within_2x_of_floor": True})
    training = Record("step", "eager fp32", "images_per_s", "images/s", Stats.of([3.0]), MACHINE,
                      settings={"model": "deeplabv3plus resnet18 128x128 batch 4"}, derived={"forward_ms": 12.5})
    peak = Record("step", "matmul peak fp32", "tflop_s", "TFLOP/s", Stats.of([0.5]), MACHINE)
    rows = report.rows([loader, training, peak])
    assert rows[0][1:6] == ["full cache, 0 workers", "512x512", "100 samples/s", "90.00 - 110 samples/s", "3"]
    assert rows[0][6] == ("1.27x the speed of a plain memory copy of the same bytes, at least half the plain-copy "
                          "speed: yes")
    assert rows[1][2] == "128x128" and rows[1][6] == "forward_ms=12.50"
    assert rows[2][2] == "-" and rows[2][3] == "0.5 TFLOP/s"
    assert "vs_plain_copy_floor" not in report.console_table([loader])


def test_each_suite_start_says_its_expected_time_from_the_last_run(tmp_path):
    results = tmp_path / "results.json"
    assert run.expected(run.previous_seconds(results, "quick").get("loader")) == (
        "expected time unknown: no earlier run of this preset here")
    results.write_text(json.dumps({"meta": {"preset": "quick", "suite_load": {"loader": {"seconds": 90.0}}}}))
    assert run.expected(run.previous_seconds(results, "quick").get("loader")) == (
        "expected ~1.5 min (the last run of this preset here)")
    assert run.previous_seconds(results, "full") == {}  # another preset's times say nothing


def test_a_cpu_without_native_bf16_measures_fp32_only(monkeypatch):
    monkeypatch.setattr(step, "cpu_has_native_bf16", lambda: False)
    names = [v.name for v in step.variants(torch.device("cpu"), with_compile=True)]
    assert names == ["eager fp32", "channels_last", "compile", "all: channels_last + compile"]
    assert step.native_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(step, "cpu_has_native_bf16", lambda: True)
    assert "amp bfloat16" in [v.name for v in step.variants(torch.device("cpu"), with_compile=False)]
