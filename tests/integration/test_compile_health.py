"""``backend.compile: true`` stays healthy: no graph breaks, one compile per mode, none for the last short batch.

The model is compiled the way ``dist_seg.train.run`` compiles it, with the ``aot_eager``
backend: Dynamo's capture, guards and recompiles and AOTAutograd's forward/backward tracing
are the ones Inductor would get, without code generation this CPU machine cannot afford in a
test. Training and validation go through the real TrainStep and ``evaluate``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch._dynamo
from support.sync_parts import (
    NUM_CLASSES,
    RECIPES,
    build_parts,
    cpu_context,
    loader_batches,
    train_micro_batches,
    val_criterion,
)
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from dist_seg.train.validation import evaluate


@pytest.mark.parametrize("model_type", ["deeplabv3plus", "lraspp"])
def test_train_eval_and_short_last_batch_compile_once_per_mode(model_type):
    torch._dynamo.reset()
    counters.clear()
    parts = build_parts(RECIPES["default"], model_type)
    compiles = CompileCounterWithBackend("aot_eager")
    parts.step.model = torch.compile(parts.step.model, backend=compiles)
    runtime = dataclasses.replace(parts.runtime, compile=True)
    # Three full validation batches of 2, then a shard's short last batch of 1.
    val_batches = loader_batches(3, seed=1) + loader_batches(1, seed=2, batch=1)
    names = [str(i) for i in range(NUM_CLASSES)]

    train_micro_batches(parts, loader_batches(2))
    assert compiles.frame_count == 1
    result = evaluate(parts.step.model, val_batches, parts.prep, runtime, val_criterion(), cpu_context(), names, 12)
    assert result.frames == 7  # the padding of the last batch counted nowhere
    assert compiles.frame_count == 2  # eval mode: one more graph, and none for the short batch
    train_micro_batches(parts, loader_batches(2, seed=3), first_step=3)
    evaluate(parts.step.model, val_batches, parts.prep, runtime, val_criterion(), cpu_context(), names, 12)
    assert compiles.frame_count == 2  # back and forth between the modes reuses both graphs
    assert dict(counters["graph_break"]) == {}


def test_padding_the_short_batch_changes_no_metric():
    parts = build_parts(RECIPES["default"], "tiny")
    batches = loader_batches(2, seed=4) + loader_batches(1, seed=5, batch=1)
    names = [str(i) for i in range(NUM_CLASSES)]
    padded = evaluate(parts.step.model, batches, parts.prep, dataclasses.replace(parts.runtime, compile=True),
                      val_criterion(), cpu_context(), names, 12)
    plain = evaluate(parts.step.model, batches, parts.prep, dataclasses.replace(parts.runtime, compile=False),
                     val_criterion(), cpu_context(), names, 12)
    assert (padded.confusion == plain.confusion).all() and padded.frames == plain.frames == 5
    assert padded.loss == pytest.approx(plain.loss, rel=1e-6)
