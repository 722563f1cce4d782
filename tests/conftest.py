"""Shared fixtures: a small synthetic DAVID-style dataset and configs for tiny, fast runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_seg.synth import generate_dataset


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 sequences x 8 frames of 48x64: Video_000..002 train, Video_003 val in :func:`tiny_config`."""
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, sequences=4, frames=8, size=(48, 64), seed=7)
    return root


@pytest.fixture(scope="session")
def deeplab_run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of one finished 1-epoch DeepLabV3+ ResNet-18 run of :func:`tiny_config` (test split Video_002).

    Shared by the tests that only read what a finished run leaves (TensorBoard events, the final
    test report, best_model.pth for predict and resume errors), instead of each training the same
    model again. Tests must write elsewhere: the folder is the same for the whole session.
    """
    from support.helpers import tiny_config

    from dist_seg.train.run import run_training

    out = tmp_path_factory.mktemp("deeplab_run") / "run"
    run_training(tiny_config(synth_root, out, training__epochs=1, dataset__split__test=["Video_002"]))
    return out


@pytest.fixture(scope="session")
def trained_checkpoint(deeplab_run: Path) -> Path:
    """``best_model.pth`` of the shared :func:`deeplab_run` (a real one-epoch training)."""
    return deeplab_run / "best_model.pth"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests where no CUDA device is present (CI, this project's CPU machines)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
