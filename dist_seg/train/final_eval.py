"""The test split scored at the end of training: the best checkpoint, native resolution, no TTA.

It runs in the precision ``dist_seg.evaluate`` defaults to (float32 on a CPU, see
:func:`~dist_seg.runtime.device.inference_runtime`), so its numbers match a later evaluate.

A run that completes all its epochs (``training.final_eval: true``, the default) and has a
test split evaluates its best checkpoint (the last one when it had no validation) with
:func:`~dist_seg.eval.native.evaluate_checkpoint`, the same code as
``dist_seg.evaluate``; the report goes to ``<output_dir>/eval/test/`` and the scalars to
TensorBoard as ``eval/test/...``. Every rank takes part (the frames are sharded by sequence).
A user error in the evaluation (a test frame deleted meanwhile, a full disk) becomes a
warning naming the command to run later: the completed training is not reported as failed.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..data.splits import read_splits
from ..errors import DistSegError, user_message
from ..eval.native import NativeEvalResult, evaluate_checkpoint
from ..runtime.device import Runtime
from ..runtime.distributed import DistContext
from ..telemetry.progress import Progress
from .outputs import RunOutputs
from .preemption import Preempted, preemption_raises

SPLIT = "test"


def final_checkpoint(out: RunOutputs) -> Path | None:
    """The checkpoint the final evaluation scores: ``best_model.pth``, else the newest checkpoint."""
    return out.best_path if out.best_path.is_file() else out.latest_checkpoint()


def evaluate_test_split(cfg: Config, ctx: DistContext, runtime: Runtime, out: RunOutputs,
                        step: int, progress: Progress | None = None) -> NativeEvalResult | None:
    """Score the run's checkpoint on its test split and publish the report; None when there is nothing to score.

    ``progress`` (rank 0's) shows the evaluation as a phase, counting this rank's frames.
    """
    if not cfg.training.final_eval:
        return None
    if not read_splits(cfg).get(SPLIT):
        out.log("final evaluation skipped: the run has no test split")
        return None
    # Rank 0 chose and wrote the checkpoint; the gather also waits until it has finished writing.
    checkpoint = ctx.gather_objects(final_checkpoint(out))[0]
    if checkpoint is None:
        return None
    out.log(f"final evaluation: {checkpoint.name} on the {SPLIT} split at native resolution, precision "
            f"{runtime.precision} (what python -m dist_seg.evaluate uses by default here)")
    tr = cfg.training
    phase = progress if progress is not None else Progress("none")

    def on_frames(frames: int, total: int) -> None:
        if not phase.in_phase:
            phase.start_phase("final evaluation", total, unit="frame")
        phase.phase_step(frames)

    # The run's own config names the model's code, so a custom model is rebuilt from it.
    later = f"python -m dist_seg.evaluate --checkpoint {checkpoint} {out.dir / 'config.yaml'}"
    try:
        with preemption_raises():  # training is saved: a signal only cuts the evaluation short
            result = evaluate_checkpoint(checkpoint, ctx, runtime, config=cfg, split=SPLIT,
                                         batch_size=tr.val_batch_size, num_workers=tr.num_workers, log=out.log,
                                         on_frames=on_frames,
                                         custom_model=cfg.model.type if cfg.model.is_custom else None)
    except Preempted as stop:
        out.log(f"final evaluation stopped on {stop.signal_name}; run it later with {later}")
        return None
    except DistSegError as exc:  # every rank gets it (rank 0 the cause), so all go on to finish alike
        # The run's product is saved: a test split that cannot be scored now must not fail it.
        out.warn(f"final evaluation failed: {user_message(exc)}; the training itself completed and is saved. "
                 f"Fix that, then run {later}")
        return None
    finally:
        phase.end_phase()
    out.save_evaluation(result, SPLIT, step)
    return result
