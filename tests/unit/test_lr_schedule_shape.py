"""The LR schedule's shape: warm-up capped to a quarter of the run, and the step schedule's milestones."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.helpers import tiny_raw_config

from dist_seg.config import TrainingConfig, config_from_dict
from dist_seg.errors import ConfigError
from dist_seg.train.schedule import lr_factor, warmup_note, warmup_steps


def _cfg(**kwargs) -> TrainingConfig:
    return TrainingConfig(output_dir=Path("o"), learning_rate=1.0, **kwargs)


def test_a_short_run_warms_up_for_a_quarter_of_its_steps_and_says_so():
    cfg = _cfg(warmup_iters=50, lr_schedule="cosine", epochs=1)
    assert warmup_steps(62, cfg) == 15
    factors = [lr_factor(s, 62, cfg) for s in range(62)]
    assert factors[14] == pytest.approx(1.0) and max(factors) == pytest.approx(1.0)  # full LR reached
    assert factors[:15] == pytest.approx([(s + 1) / 15 for s in range(15)])
    assert warmup_note(62, cfg) == ("warm-up capped: training.warmup_iters 50 is more than 25% of this run's 62 "
                                    "optimizer steps, so the learning rate warms up over 15 steps")
    # A 15-step fine-tune reaches its learning rate after 3 steps instead of ending at a third of it.
    assert lr_factor(2, 15, _cfg(warmup_iters=50, lr_schedule="constant")) == pytest.approx(1.0)


def test_a_long_run_keeps_its_warmup_without_a_note():
    cfg = _cfg(warmup_iters=50)
    assert warmup_steps(1000, cfg) == 50 and warmup_note(1000, cfg) is None
    assert warmup_steps(1000, _cfg(warmup_iters=0)) == 0 and warmup_note(1000, _cfg(warmup_iters=0)) is None


def test_step_schedule_multiplies_by_gamma_after_each_milestone_epoch():
    cfg = _cfg(warmup_iters=0, lr_schedule="step", epochs=4, lr_milestones=[1, 3], lr_gamma=0.5)
    # 10 steps per epoch: epoch 1 is steps 0-9, the drop comes at epoch 2's first step.
    assert [lr_factor(s, 40, cfg) for s in (0, 9, 10, 29, 30, 39)] == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])


@pytest.mark.parametrize("training, message", [
    ({"lr_schedule": "step"}, "lr_schedule: step needs the epochs"),
    ({"lr_schedule": "step", "lr_milestones": [2, 1]}, "must be strictly increasing epochs"),
    ({"lr_schedule": "step", "lr_milestones": [2]}, r"between 1 and training.epochs - 1 \(1\)"),
    ({"lr_gamma": 0}, "lr_gamma: must be in"),
])
def test_step_schedule_settings_are_checked(training, message, tmp_path):
    raw = tiny_raw_config(tmp_path, tmp_path / "out")
    raw["training"].update(training)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)
