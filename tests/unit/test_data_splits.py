"""Sequence splits: reproducible, named lists win, persisted and reused, resplit on change."""

from __future__ import annotations

import json

import pytest
from support.data_files import make_config, make_dataset

from dist_seg.config import SplitConfig
from dist_seg.data.discovery import discover
from dist_seg.data.splits import assign_sequences, read_splits, resolve_splits
from dist_seg.errors import ConfigError, DataError

NAMES = [f"Video_{i:03d}" for i in range(10)]


def test_assignment_is_reproducible_by_seed_and_by_sequence():
    split = SplitConfig(val_fraction=0.2, test_fraction=0.1)
    first = assign_sequences(NAMES, split, seed=1, test_from_root=False)
    assert first == assign_sequences(list(reversed(NAMES)), split, seed=1, test_from_root=False)
    assert (len(first["train"]), len(first["val"]), len(first["test"])) == (7, 2, 1)
    assert sorted(first["train"] + first["val"] + first["test"]) == NAMES
    others = [assign_sequences(NAMES, split, seed=s, test_from_root=False) for s in range(2, 6)]
    assert any(o != first for o in others)


def test_small_datasets_still_get_validation_but_never_lose_training():
    split = SplitConfig(val_fraction=0.15, test_fraction=0.1)
    assert {k: len(v) for k, v in assign_sequences(NAMES[:3], split, 0, test_from_root=False).items()} == \
        {"train": 1, "val": 1, "test": 1}
    assert {k: len(v) for k, v in assign_sequences(NAMES[:2], split, 0, test_from_root=False).items()} == \
        {"train": 1, "val": 1, "test": 0}
    assert assign_sequences(NAMES[:1], split, 0, test_from_root=False) == \
        {"train": NAMES[:1], "val": [], "test": []}


def test_named_splits_win_over_fractions_and_unknown_names_are_config_errors():
    split = SplitConfig(val_fraction=0.5, test_fraction=0.1, val=["Video_003"], test=["Video_007", "Video_008"])
    result = assign_sequences(NAMES, split, seed=0, test_from_root=False)
    assert result["val"] == ["Video_003"] and result["test"] == ["Video_007", "Video_008"]
    assert len(result["train"]) == 7

    with pytest.raises(ConfigError, match="did you mean 'Video_003'"):
        assign_sequences(NAMES, SplitConfig(val=["Video_03"]), seed=0, test_from_root=False)
    with pytest.raises(ConfigError, match="leave no sequence for training"):
        assign_sequences(NAMES[:1], SplitConfig(val=NAMES[:1]), seed=0, test_from_root=False)
    with pytest.raises(ConfigError, match="test_root"):
        assign_sequences(NAMES, SplitConfig(test=["Video_001"]), seed=0, test_from_root=True)


def _resolve(cfg, lines):
    return resolve_splits(discover(cfg.dataset.root, cfg.dataset), None, cfg, log=lines.append)


def test_splits_are_persisted_reused_and_recomputed_with_a_reason(tmp_path):
    root = make_dataset(tmp_path / "data", {n: 1 for n in NAMES[:4]})
    cfg = make_config(tmp_path, root, dataset={"split": {"val_fraction": 0.25, "test_fraction": 0.25}})
    lines: list[str] = []
    splits = _resolve(cfg, lines)
    path = tmp_path / "out" / "splits.json"
    stored = json.loads(path.read_text())
    assert stored["settings"]["seed"] == cfg.training.seed
    assert [s["name"] for s in stored["splits"]["val"]] == [s.name for s in splits.val]
    assert stored["splits"]["train"][0]["frames"] == [f"{splits.train[0].name.lower()}_0000.png"]
    assert "no splits.json yet" in lines[-1]

    # Reuse means reuse: a hand-edited assignment survives while the inputs are unchanged.
    stored["splits"]["train"][0], stored["splits"]["val"][0] = stored["splits"]["val"][0], stored["splits"]["train"][0]
    path.write_text(json.dumps(stored))
    lines.clear()
    reused = _resolve(cfg, lines)
    assert [s.name for s in reused.val] == [splits.train[0].name]
    assert any("reusing" in line for line in lines)
    assert read_splits(cfg) == reused

    forced = make_config(tmp_path, root, dataset={"split": {"val_fraction": 0.25, "test_fraction": 0.25}},
                         training={"force_resplit": True})
    lines.clear()
    assert _resolve(forced, lines) == splits
    assert "force_resplit" in lines[-1]

    reseeded = make_config(tmp_path, root, dataset={"split": {"val_fraction": 0.25, "test_fraction": 0.25}},
                           training={"seed": 7})
    lines.clear()
    _resolve(reseeded, lines)
    assert "split settings changed: seed 1337 -> 7" in lines[-1]
    with pytest.raises(DataError, match="other split settings"):
        read_splits(cfg)

    make_dataset(root, {"Video_010": 1})
    lines.clear()
    _resolve(reseeded, lines)
    assert "sequence list changed: +Video_010" in lines[-1]


def test_single_sequence_trains_on_everything_and_says_validation_is_skipped(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 3})
    lines: list[str] = []
    splits = _resolve(make_config(tmp_path, root), lines)
    assert [s.name for s in splits.train] == ["Video_000"] and not splits.val and not splits.test
    assert any("validation and visualization will be skipped" in line for line in lines)


def test_test_root_is_the_test_split(tmp_path):
    root = make_dataset(tmp_path / "data", {"Video_000": 1, "Video_001": 1})
    test_root = make_dataset(tmp_path / "test", {"Video_000": 2}, seed=1)
    cfg = make_config(tmp_path, root, dataset={"test_root": str(test_root)})
    lines: list[str] = []
    splits = resolve_splits(discover(root, cfg.dataset), discover(test_root, cfg.dataset, apply_filters=False),
                            cfg, log=lines.append)
    assert [(s.root, s.name) for s in splits.test] == [(test_root, "Video_000")]
    assert len(splits.train) == 1 and len(splits.val) == 1
    assert splits.test[0].frame_records()[1].mask == test_root / "Labels/Video_000/video_000_0001.png"


def test_a_fraction_that_takes_a_whole_sequence_from_a_small_training_set_is_a_loud_warning(tmp_path):
    from support.data_files import make_config, make_dataset

    from dist_seg.data.pipeline import prepare

    root = make_dataset(tmp_path / "data", {f"Video_00{i}": 2 for i in range(4)})
    lines: list[str] = []
    cfg = make_config(tmp_path, root, dataset={"split": {"val": ["Video_003"]}})
    summary = prepare(cfg, log=lines.append, progress=False)
    warnings = [line for line in lines if line.startswith("WARNING: splits:")]
    assert summary.split_counts["test"] == (1, 2) and summary.split_counts["train"] == (2, 4)
    assert len(warnings) == 1, lines
    assert "dataset.split.test_fraction 0.1 moved Video_00" in warnings[0]
    assert "25% of the frames instead of 10%" in warnings[0] and "training loses 33% of its frames" in warnings[0]
    assert "dataset.split.test: []" in warnings[0]

    lines.clear()
    prepare(make_config(tmp_path, root, dataset={"split": {"val": ["Video_003"], "test": []}}),
            log=lines.append, progress=False)
    assert not [line for line in lines if line.startswith("WARNING")]
