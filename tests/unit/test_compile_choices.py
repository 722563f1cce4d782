"""Compile, DDP and precision choices: SyncBN turns compile off (logged), buffers broadcast only when they can
differ, gradients as bucket views, TF32 through the current API, a collective timeout that covers compiling,
Inductor threads shared among the node's ranks."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from support.helpers import tiny_config
from support.sync_parts import TinySegNet

from dist_seg.config import BackendConfig
from dist_seg.parallel import usable_cores
from dist_seg.runtime.device import enable_tf32, resolve_runtime, tf32_enabled, without_compile_for_sync_bn
from dist_seg.runtime.distributed import DistContext, collective_timeout_s
from dist_seg.runtime.threads import apply_compile_threads
from dist_seg.train.outputs import RunOutputs
from dist_seg.train.run import _place_model, buffers_stay_in_sync


def _runtime(compile_: bool):
    runtime = resolve_runtime(BackendConfig(target="cpu"), torch.device("cpu"), log=lambda _m: None)
    return dataclasses.replace(runtime, compile=compile_)


def test_sync_batch_norm_turns_compile_off_and_says_why():
    lines: list[str] = []
    assert without_compile_for_sync_bn(_runtime(True), True, lines.append).compile is False
    assert len(lines) == 1 and "SyncBatchNorm" in lines[0] and "graph break" in lines[0]
    assert without_compile_for_sync_bn(_runtime(True), False, lines.append).compile is True
    assert without_compile_for_sync_bn(_runtime(False), True, lines.append).compile is False
    assert len(lines) == 1  # nothing to say when compile was off anyway or BatchNorm stays per rank


def test_only_buffers_sync_batch_norm_keeps_equal_skip_the_broadcast():
    assert not buffers_stay_in_sync(TinySegNet(3))  # BatchNorm statistics follow each rank's batches
    assert buffers_stay_in_sync(torch.nn.SyncBatchNorm.convert_sync_batchnorm(TinySegNet(3)))
    assert buffers_stay_in_sync(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU()))  # no buffers
    custom = torch.nn.SyncBatchNorm.convert_sync_batchnorm(TinySegNet(3))
    custom.register_buffer("steps", torch.zeros(()))
    assert not buffers_stay_in_sync(custom)


def test_ddp_wrap_uses_bucket_views_and_broadcasts_per_rank_batch_norm(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        cfg = tiny_config(Path(tmp_path / "data"), tmp_path / "out")
        ctx = DistContext(0, 0, 1, torch.device("cpu"), "gloo")
        plain = tiny_sync = None
        for model in (TinySegNet(3), torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1))):
            ddp, _eval = _place_model(model, cfg, ctx, _runtime(False), RunOutputs(cfg, active=False))
            assert ddp.gradient_as_bucket_view
            plain, tiny_sync = (ddp, tiny_sync) if plain is None else (plain, ddp)
        assert plain.forward_sync_buffers and not tiny_sync.forward_sync_buffers
    finally:
        dist.destroy_process_group()


def test_collective_timeout_covers_the_first_compile():
    cfg = BackendConfig(dist_timeout_s=600, compile_timeout_s=1800)
    assert collective_timeout_s(cfg, torch.device("cpu")) == 600  # auto: no compile on CPU
    assert collective_timeout_s(dataclasses.replace(cfg, compile=True), torch.device("cpu")) == 1800
    assert collective_timeout_s(cfg, torch.device("cuda", 0)) == 1800  # auto compiles on GPUs
    assert collective_timeout_s(dataclasses.replace(cfg, compile=False), torch.device("cuda", 0)) == 600
    assert collective_timeout_s(dataclasses.replace(cfg, compile=True, dist_timeout_s=3600),
                                torch.device("cpu")) == 3600


@pytest.fixture
def restore_precision_and_inductor():
    import torch._inductor.config as inductor_config

    matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    threads = inductor_config.compile_threads
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv
    inductor_config.compile_threads = threads


def test_tf32_goes_through_fp32_precision(restore_precision_and_inductor):
    enable_tf32()
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert tf32_enabled()


def test_inductor_compile_threads_are_the_cores_shared_among_local_ranks(restore_precision_and_inductor):
    import torch._inductor.config as inductor_config

    cores = usable_cores()
    assert apply_compile_threads(1) == inductor_config.compile_threads == cores
    assert apply_compile_threads(cores * 4) == inductor_config.compile_threads == 1
