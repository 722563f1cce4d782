"""The training sampler across world sizes: an epoch interrupted on W ranks continues on W' ranks
with exactly the samples it had not yet seen (no torch.distributed needed: ranks are sampler arguments)."""

from __future__ import annotations

import pytest
from torch.utils.data import BatchSampler, DistributedSampler

from dist_seg.data.loader import TrainingSampler
from dist_seg.data.position import batches_per_epoch, resume_batch, stream_seed

FRAMES = 22
SEED = 5


def global_batches(world: int, batch: int, epoch: int, start_sample: int = 0) -> list[list[int]]:
    """The k-th batches of all ranks together, rank by rank, as the training loader deals them."""
    per_rank = []
    for rank in range(world):
        sampler = TrainingSampler(range(FRAMES), num_replicas=world, rank=rank, shuffle=True, seed=SEED,
                                  drop_last=True)
        sampler.set_epoch(epoch)
        sampler.start_sample = start_sample
        per_rank.append(list(BatchSampler(sampler, batch, drop_last=True)))
    return [[i for batch in batches for i in batch] for batches in zip(*per_rank, strict=True)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_from_the_start_of_an_epoch_the_order_is_distributed_samplers(world):
    for rank in range(world):
        ours = TrainingSampler(range(FRAMES), num_replicas=world, rank=rank, seed=SEED, drop_last=True)
        theirs = DistributedSampler(range(FRAMES), num_replicas=world, rank=rank, seed=SEED, drop_last=True)
        ours.set_epoch(4)
        theirs.set_epoch(4)
        assert list(ours) == list(theirs) and len(ours) == len(theirs)


@pytest.mark.parametrize(("before", "after", "steps_before"), [((1, 2), (2, 2), 3), ((2, 2), (1, 2), 3),
                                                                ((2, 2), (3, 1), 2), ((1, 4), (2, 3), 1)])
def test_a_resume_on_another_world_size_deals_out_exactly_the_unseen_samples(before, after, steps_before):
    (world, batch), (world2, batch2) = before, after
    seen = [i for b in global_batches(world, batch, epoch=2)[:steps_before] for i in b]
    rest = [i for b in global_batches(world2, batch2, epoch=2, start_sample=len(seen)) for i in b]
    assert not set(seen) & set(rest) and len(set(rest)) == len(rest)
    # Everything not yet seen, except the incomplete last global batch every epoch drops.
    unseen = FRAMES - len(seen)
    assert len(rest) == unseen - unseen % (world2 * batch2)
    assert set(seen) | set(rest) <= set(range(FRAMES))
    # In the order of the epoch's one permutation, whatever the world size.
    whole = [i for b in global_batches(1, 1, epoch=2) for i in b]
    assert sorted(rest, key=whole.index) == whole[len(seen):len(seen) + len(rest)]
    # The batch the resumed run counts from leaves exactly the batches it deals out.
    first = resume_batch(FRAMES, len(seen), batch2, world2, 1)
    assert batches_per_epoch(FRAMES, batch2, world2, 1) - first == len(rest) // (world2 * batch2)


def test_resume_batch_counts_whole_optimizer_steps_only():
    # 22 frames, 2 ranks x 2 x accumulation 2 = 8 samples per step: 2 steps (4 micro-batches) per epoch.
    assert batches_per_epoch(22, 2, 2, 2) == 4
    assert resume_batch(22, 0, 2, 2, 2) == 0
    assert resume_batch(22, 6, 2, 2, 2) == 0  # 16 left fill both steps: the epoch's last 6 frames were its tail
    assert resume_batch(22, 7, 2, 2, 2) == 2  # 15 left: 1 step, the epoch's second
    assert resume_batch(22, 22, 2, 2, 2) == 4
    with pytest.raises(ValueError, match="outside an epoch"):
        resume_batch(22, 23, 2, 2, 2)


def test_stream_seeds_are_a_function_of_the_position_and_the_rank():
    seeds = {stream_seed(SEED, epoch, sample, rank) for epoch in (0, 1) for sample in (0, 6) for rank in (0, 1)}
    assert len(seeds) == 8
    assert stream_seed(SEED, 1, 6, 0) == stream_seed(SEED, 1, 6, 0)
