"""The inference precision rule (fp32 on a CPU unless asked) and how evaluate describes what it ran."""

from __future__ import annotations

import pytest
import torch

from dist_seg.errors import ConfigError
from dist_seg.eval.inference import InferenceSettings
from dist_seg.runtime.device import describe_precision, inference_runtime

CPU = torch.device("cpu")


def test_cpu_inference_defaults_to_float32_whatever_the_cpu_flags():
    runtime = inference_runtime(CPU)
    assert not runtime.amp and runtime.precision == "fp32" and not runtime.compile
    assert describe_precision(runtime, None) == ("precision fp32 (the CPU default; --precision bf16 runs bfloat16 "
                                                 "autocast)")


def test_asked_precision_is_used_or_refused_with_the_option_named():
    bf16 = inference_runtime(CPU, "bf16")
    assert bf16.amp and bf16.amp_dtype == torch.bfloat16 and bf16.precision == "bf16"
    assert describe_precision(bf16, "bf16") == "precision bf16 (--precision bf16)"
    assert inference_runtime(CPU, "fp32").precision == "fp32"
    with pytest.raises(ConfigError, match="--precision fp16 needs a GPU"):
        inference_runtime(CPU, "fp16")
    with pytest.raises(ConfigError, match="--precision must be one of fp32, bf16, fp16"):
        inference_runtime(CPU, "half")


def test_slide_description_names_the_window_actually_used():
    settings = InferenceSettings(mode="slide", flip=True)
    assert settings.describe((48, 64)) == "slide crop 48x64 stride 32x43, flip"
    assert settings.describe() == "slide crop auto stride auto, flip"
    assert InferenceSettings(mode="slide", crop=(30, 40)).describe((48, 64)) == "slide crop 30x40 stride 20x27"
