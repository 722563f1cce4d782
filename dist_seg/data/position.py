"""Where an interrupted epoch continues when the run resumes with another global batch.

An elastic restart can change the number of ranks (or a user the batch size). Whatever the
world size, the ranks' k-th batches together are the k-th run of one permutation of the
epoch (see :class:`~dist_seg.data.loader.TrainingSampler`), so a position inside an epoch is
a count of samples, and the resumed run starts its sampler exactly there. What this run then
counts in its own batches and optimizer steps, and how it seeds its random streams, follows
from that count alone.
"""

from __future__ import annotations

import hashlib


def batches_per_epoch(frames: int, batch_size: int, world_size: int, grad_accum_steps: int) -> int:
    """Micro-batches per rank in a whole epoch of ``frames``: whole optimizer steps only (drop-last)."""
    return frames // (batch_size * world_size * grad_accum_steps) * grad_accum_steps


def resume_batch(frames: int, start_sample: int, batch_size: int, world_size: int, grad_accum_steps: int) -> int:
    """The batch of the epoch at which this run continues after ``start_sample`` samples were trained.

    Chosen so that the batches still to run, ``batches_per_epoch - resume_batch``, are the
    whole optimizer steps that the rest of the order (``frames - start_sample`` samples)
    fills; as in every epoch, an incomplete last step is dropped. The epoch therefore ends on
    this run's schedule, and its step count stays ``epoch x steps_per_epoch + batch // accum``.
    """
    if not 0 <= start_sample <= frames:
        raise ValueError(f"a position of {start_sample} samples is outside an epoch of {frames}")
    left = batches_per_epoch(frames - start_sample, batch_size, world_size, grad_accum_steps)
    return batches_per_epoch(frames, batch_size, world_size, grad_accum_steps) - left


def stream_seed(seed: int, epoch: int, start_sample: int, rank: int) -> int:
    """The seed of rank ``rank``'s random streams when it resumes on another world size.

    The saved streams belong to ranks that no longer exist, and restarting from
    ``training.seed`` would replay the random numbers of the run's first steps. A function of
    the position and the rank instead: every resume from one checkpoint draws the same
    augmentation, and no two ranks or positions share a stream.
    """
    key = f"dist_seg-resume:{seed}:{epoch}:{start_sample}:{rank}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)
