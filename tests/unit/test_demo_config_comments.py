"""configs/demo.yaml's comment on ``amp`` states the rule the run applies (and logs) on this kind of CPU."""

from __future__ import annotations

import pytest
import torch
from support.helpers import REPO_ROOT

from dist_seg.config import load_config
from dist_seg.runtime import amp_policy
from dist_seg.runtime.device import inference_runtime, resolve_runtime

DEMO = REPO_ROOT / "configs" / "demo.yaml"


def _amp_comment() -> str:
    lines = DEMO.read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if line.strip().startswith("amp:"))
    start = end
    while lines[start - 1].strip().startswith("#"):
        start -= 1
    return " ".join(line.strip().lstrip("# ") for line in lines[start:end + 1])


@pytest.mark.parametrize("flags, said, dtype", [({"avx2", "avx512_bf16"}, "bfloat16 on GPUs and on CPUs with "
                                                 "avx512_bf16", torch.bfloat16),
                                                ({"avx2"}, "other CPUs train in float32", None)])
def test_demo_amp_comment_matches_what_the_cpu_runs(monkeypatch, flags, said, dtype):
    comment = _amp_comment()
    assert "switched off on CPU" not in comment
    assert said in comment and "predict / evaluate run float32 on a CPU" in comment
    monkeypatch.setattr(amp_policy, "cpu_flags", lambda *_a: frozenset(flags))
    runtime = resolve_runtime(load_config(DEMO).backend, torch.device("cpu"), log=lambda _m: None)
    assert (runtime.amp_dtype if runtime.amp else None) == dtype
    assert inference_runtime(torch.device("cpu")).precision == "fp32"
