"""Pre-flight checks that need no training run: BatchNorm and a batch of one, memory, parallelism, split names."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from faulty_models import CPU_OOM, PooledBatchNorm, SpatialBatchNorm
from support.data_files import make_config, make_dataset
from torch import nn

from dist_seg.config import SplitConfig, config_from_dict
from dist_seg.data import loader as loader_module
from dist_seg.data.cache_loader import CacheLoader
from dist_seg.data.loader import SingleProcess, build_loader, check_loader_memory
from dist_seg.data.pipeline import load_datasets, prepare
from dist_seg.data.splits import check_split_names
from dist_seg.errors import ConfigError
from dist_seg.models.batchnorm import batch_statistics
from dist_seg.paths import check_writable_folder
from dist_seg.runtime.memory import is_out_of_memory, memory_needed_by
from dist_seg.train.preflight import batch_norm_samples, check_model_output

CPU = torch.device("cpu")


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- BatchNorm and a batch of one


def test_batch_statistics_changes_nothing_and_restores_the_mode():
    model = SpatialBatchNorm(3)
    before = _buffers(model)
    with torch.no_grad(), batch_statistics(model):
        assert not model.training and model.backbone[1].training  # only BatchNorm on batch statistics
        model(torch.randn(2, 3, 8, 8))
    assert model.training and _same(before, _buffers(model))


def test_the_preflight_refuses_a_batch_of_one_only_where_batchnorm_cannot_take_it():
    with pytest.raises(ConfigError, match="training.batch_size: 1 cannot train PooledBatchNorm: its BatchNorm needs"):
        check_model_output(PooledBatchNorm(3), 3, (8, 8), CPU, batch_size=1)
    check_model_output(PooledBatchNorm(3), 3, (8, 8), CPU, batch_size=2)
    model = SpatialBatchNorm(3)
    before = _buffers(model)
    check_model_output(model, 3, (8, 8), CPU, batch_size=1)
    assert _same(before, _buffers(model))  # the pass in training-mode BatchNorm left the statistics alone


def test_batch_norm_samples_counts_ranks_only_under_sync_bn():
    def cfg(batch: int, sync: bool):
        return config_from_dict({"dataset": {"root": "/d"}, "training": {"output_dir": "/o", "batch_size": batch},
                                 "backend": {"sync_bn": sync}})

    assert batch_norm_samples(cfg(1, False)) == 1
    assert batch_norm_samples(cfg(1, True)) == 2  # the ranks are not known yet: the check waits for them
    assert batch_norm_samples(cfg(1, True), synced_ranks=4) == 4
    assert batch_norm_samples(cfg(1, True), synced_ranks=1) == 1


# ----------------------------------------------------------------------------- memory


def test_out_of_memory_is_told_apart_from_other_errors():
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes"):
        with memory_needed_by("training.batch_size 4: a step", CPU, "lower it"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(ConfigError, match=r"training.batch_size 4: a step does not fit in memory on cpu \(.*\); lower it"):
        with memory_needed_by("training.batch_size 4: a step", CPU, "lower it"):
            raise RuntimeError(CPU_OOM)


def test_loader_memory_is_checked_against_what_is_available(monkeypatch):
    cfg = config_from_dict({"dataset": {"root": "/d"}, "training": {"output_dir": "/o", "num_workers": 16,
                                                                     "prefetch_factor": 64}})
    memory = namedtuple("memory", "available")
    monkeypatch.setattr(loader_module.psutil, "virtual_memory", lambda: memory(8 * 2**30))
    with pytest.raises(ConfigError, match=r"training.batch_size 16: the loader would hold 1026 batches .*"
                                          r"training.prefetch_factor 64 ahead\), 16.0 GiB, but only 8.0 GiB"):
        check_loader_memory((512, 512), 16, 5000, cfg.training, train=True)
    check_loader_memory((512, 512), 16, 5000, config_from_dict(
        {"dataset": {"root": "/d"}, "training": {"output_dir": "/o"}}).training, train=True)
    with pytest.raises(ConfigError, match="training.val_batch_size 100000"):
        check_loader_memory((512, 512), 100_000, 1, cfg.training, train=False)


def test_a_val_batch_size_beyond_the_split_allocates_only_its_frames(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 4, "Video_001": 3})
    cfg = make_config(tmp_path, root, dataset={"split": {"val": ["Video_001"], "test": []}},
                      training={"val_batch_size": 100_000})
    prepare(cfg, log=lambda _: None, progress=False)
    loader = build_loader(load_datasets(cfg).val, cfg.training, SingleProcess(), train=False)
    assert isinstance(loader, CacheLoader) and loader.pool.capacity == 3
    assert [len(batch.paths) for batch in loader] == [3]


@pytest.mark.parametrize("section, key, value", [
    ("training", "prefetch_factor", 65), ("training", "num_workers", 100_000), ("dataset", "cache_workers", 100_000),
])
def test_absurd_loader_and_cache_parallelism_is_refused(section, key, value):
    raw = {"dataset": {"root": "/d"}, "training": {"output_dir": "/o"}}
    raw[section][key] = value
    with pytest.raises(ConfigError, match=f"{section}.{key}: must be"):
        config_from_dict(raw)


# ----------------------------------------------------------------------------- splits and paths


def test_split_settings_that_leave_no_training_are_found_from_the_names_alone():
    names = ["A", "B", "C"]
    with pytest.raises(ConfigError, match=r"leave no sequence for training \(the dataset has A, B, C\)"):
        check_split_names(names, SplitConfig(val=["A", "B"], test=["C"]), test_from_root=False)
    with pytest.raises(ConfigError, match="dataset.split.test and dataset.test_root"):
        check_split_names(names, SplitConfig(test=["C"]), test_from_root=True)
    check_split_names(names, SplitConfig(val=["A"], test=["C"]), test_from_root=False)


def test_a_folder_check_creates_nothing(tmp_path):
    check_writable_folder(tmp_path / "a" / "b", "training.output_dir")
    assert not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="training.output_dir: cannot write to .* is a file, not a folder"):
        check_writable_folder(tmp_path / "f" / "b", "training.output_dir")
