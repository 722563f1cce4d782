"""No host sync in train steps, validation batches or precise BN, and the same numbers as before.

The counts come from :class:`support.sync_counter.SyncCounter` (aten ops that read a CUDA
device on the host). The ``_old_*`` functions are the implementations these replaced (with
boolean indexing, ``unique().tolist()``, ``int(t)``, ``bincount``, per-tensor EMA, BatchNorm
momentum ``None``), kept here to pin the new ones to the same results on fixed seeds.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from support.sync_counter import SyncCounter
from support.sync_parts import (
    NUM_CLASSES,
    RECIPES,
    build_parts,
    cpu_context,
    loader_batches,
    train_micro_batches,
    val_criterion,
)

from dist_seg.config import IGNORE_INDEX
from dist_seg.eval.metrics import update_confusion
from dist_seg.models.batchnorm import batch_norms
from dist_seg.train.ema import ModelEma
from dist_seg.train.losses import OhemCrossEntropy, SegmentationLoss, dice_loss, lovasz_softmax
from dist_seg.train.photometric import _LUMA, PhotometricRanges, _colour_matrices, photometric_jitter
from dist_seg.train.precise_bn import recompute_bn_stats
from dist_seg.train.validation import evaluate

CLASS_NAMES = [f"c{i}" for i in range(NUM_CLASSES)]


# ----------------------------------------------------------------------------- the counter itself


def test_counter_sees_the_host_reads_it_is_for():
    t = torch.tensor([0.0, 2.0, 3.0])
    with SyncCounter() as counter:
        t.sum().item()
        bool(t.any())
        t[t > 1]
        t.nonzero()
        torch.bincount(t.long(), minlength=8)
        torch.unique(t)
        (t * 2).add_(1)  # not a sync
    assert counter.counts == {"_local_scalar_dense": 2, "index[bool]": 1, "nonzero": 1, "bincount": 1,
                              "_unique2": 1}


# ----------------------------------------------------------------------------- counts


# DeepLabV3+ with the default recipe and with every switch at once; each switch alone on the tiny net.
@pytest.mark.parametrize("recipe, model_type", [("default", "deeplabv3plus"), ("all", "deeplabv3plus")]
                         + [(name, "tiny") for name in RECIPES])
def test_train_steps_make_no_host_sync(recipe, model_type):
    parts = build_parts(RECIPES[recipe], model_type)
    accum = parts.recipe.grad_accum_steps
    batches = loader_batches(2 * accum)
    train_micro_batches(parts, batches[:accum])  # the first step builds optimizer state
    with SyncCounter() as counter:
        losses = train_micro_batches(parts, batches[accum:], first_step=2)
    assert counter.counts == {}
    assert all(math.isfinite(float(loss)) for loss in losses)


def _validation_syncs(batches: int) -> int:
    parts = build_parts(RECIPES["default"], "tiny")
    with SyncCounter() as counter:
        result = evaluate(parts.step.model, loader_batches(batches), parts.prep, parts.runtime, val_criterion(),
                          cpu_context(), CLASS_NAMES, void_index=12)
    assert result.frames == 2 * batches
    return counter.total


def test_validation_syncs_do_not_grow_with_batches():
    assert _validation_syncs(1) == _validation_syncs(3)


def test_precise_bn_syncs_do_not_grow_with_batches():
    parts = build_parts(RECIPES["default"], "tiny")
    inputs = [parts.prep.eval_batch(images, masks)[0] for images, masks, _ in loader_batches(3)]
    counts = []
    for n in (1, 3):
        with SyncCounter() as counter:
            assert recompute_bn_stats(parts.step.model, inputs, n) == n
        counts.append(counter.total)
    assert counts[0] == counts[1]


# ----------------------------------------------------------------------------- same numbers as before


def _old_update_confusion(confusion, pred, target, num_classes):
    valid = target != IGNORE_INDEX
    index = target[valid] * num_classes + pred[valid]
    confusion += torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _logits_and_target(seed: int, c: int = 5, ignore_share: float = 0.3, size=(2, 9, 11)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(size[0], c, *size[1:], generator=g, requires_grad=True)
    target = torch.randint(0, c, size, generator=g)
    target[torch.rand(size, generator=g) < ignore_share] = IGNORE_INDEX
    return logits, target


def test_confusion_matches_bincount():
    for seed, ignore in ((0, 0.3), (1, 1.0), (2, 0.0)):
        logits, target = _logits_and_target(seed, ignore_share=ignore)
        pred = logits.argmax(1)
        old, new = torch.zeros(5, 5, dtype=torch.int64), torch.zeros(5, 5, dtype=torch.int64)
        _old_update_confusion(old, pred, target, 5)
        update_confusion(new, pred, target, 5)
        assert torch.equal(old, new)


def test_validation_loss_weight_matches_boolean_indexing():
    logits, target = _logits_and_target(3)
    weight = torch.rand(5, generator=torch.Generator().manual_seed(4)) + 0.5
    loss_sum, denom = SegmentationLoss(weight).sum_and_weight(logits, target)
    valid = target != IGNORE_INDEX
    assert torch.allclose(denom, weight[target.clamp(max=4)][valid].sum(), rtol=1e-6, atol=0)
    assert torch.allclose(loss_sum / denom, F.cross_entropy(logits, target, weight=weight,
                                                            ignore_index=IGNORE_INDEX), rtol=1e-5)


def _old_ohem_kept(logits, target, thresh, min_kept):
    valid = target != IGNORE_INDEX
    prob = torch.softmax(logits.float(), dim=1)
    true_prob = prob.gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
    hard = valid & (true_prob < thresh)
    needed = min(min_kept, int(valid.sum()))
    if int(hard.sum()) >= needed:
        return hard
    scores = torch.where(valid, true_prob, torch.full_like(true_prob, float("inf"))).flatten()
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[torch.topk(scores, needed, largest=False).indices] = True
    return keep.view_as(valid)


@pytest.mark.parametrize("thresh, min_kept", [(0.7, 20), (0.05, 50), (0.05, 10_000), (0.5, 0)])
def test_ohem_keeps_the_same_pixels(thresh, min_kept):
    logits, target = _logits_and_target(5)
    weight = torch.rand(5, generator=torch.Generator().manual_seed(6)) + 0.5
    ohem = OhemCrossEntropy(weight, thresh, min_kept)
    old = _old_ohem_kept(logits.detach(), target, thresh, min_kept)
    assert torch.equal(ohem.kept(logits.detach(), target), old)
    per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="none")
    expected = (per_pixel * old).sum() / (weight[target.clamp(0, 4)] * old).sum()
    assert torch.allclose(ohem(logits, target), expected, rtol=1e-6)


def test_ohem_on_an_all_ignored_batch_is_zero_with_a_graph():
    logits, target = _logits_and_target(7, ignore_share=1.0)
    loss = OhemCrossEntropy(None, 0.7, 10)(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def _old_valid_probs(logits, target):
    c = logits.shape[1]
    prob = torch.softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, c)
    labels = target.reshape(-1)
    valid = labels != IGNORE_INDEX
    return prob[valid], labels[valid]


def _old_dice(logits, target, smooth=1.0):
    prob, labels = _old_valid_probs(logits, target)
    onehot = F.one_hot(labels, logits.shape[1]).to(prob.dtype)
    inter = (prob * onehot).sum(0)
    total = prob.sum(0) + onehot.sum(0)
    return 1.0 - ((2 * inter + smooth) / (total + smooth)).mean()


def _old_lovasz(logits, target):
    prob, labels = _old_valid_probs(logits, target)
    losses = []
    for c in labels.unique().tolist():
        fg = (labels == c).to(prob.dtype)
        errors = (fg - prob[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        sorted_fg = fg[order]
        fg_total = sorted_fg.sum()
        jaccard = 1.0 - (fg_total - sorted_fg.cumsum(0)) / (fg_total + (1.0 - sorted_fg).cumsum(0))
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
        losses.append(torch.dot(errors_sorted, jaccard))
    return torch.stack(losses).mean() if losses else logits.sum() * 0.0


@pytest.mark.parametrize("new, old", [(dice_loss, _old_dice), (lovasz_softmax, _old_lovasz)])
@pytest.mark.parametrize("seed, ignore", [(8, 0.3), (9, 0.0), (10, 1.0)])
def test_dice_and_lovasz_values_and_gradients_match(new, old, seed, ignore):
    logits, target = _logits_and_target(seed, ignore_share=ignore)
    if seed == 9:
        target[target == 3] = 1  # a class absent from the labels
    values, grads = [], []
    for fn in (new, old):
        logits.grad = None
        value = fn(logits, target)
        value.backward()
        values.append(value.detach())
        grads.append(logits.grad.clone())
    assert torch.allclose(values[0], values[1], rtol=1e-5, atol=1e-7)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def _old_photometric(images, ranges, generator):
    b = images.shape[0]
    u = torch.rand(b, 5, generator=generator, dtype=torch.float64) * 2 - 1
    brightness, contrast = 1 + ranges.brightness * u[:, 0], 1 + ranges.contrast * u[:, 1]
    saturation, hue, gamma = 1 + ranges.saturation * u[:, 2], ranges.hue * u[:, 3], 1 + ranges.gamma * u[:, 4]

    def per_sample(values):
        return values.to(dtype=images.dtype).view(b, 1, 1, 1)

    x = (images * per_sample(brightness)).clamp_(0, 1)
    mean = torch.einsum("c,bchw->bhw", _LUMA.to(images.dtype), x).mean(dim=(1, 2)).view(b, 1, 1, 1)
    x = ((x - mean) * per_sample(contrast) + mean).clamp_(0, 1)
    x = torch.einsum("bij,bjhw->bihw", _colour_matrices(saturation, hue).to(images.dtype), x).clamp_(0, 1)
    return x.pow_(per_sample(gamma))


def test_photometric_draws_and_results_are_unchanged():
    images = torch.rand(3, 3, 8, 10, generator=torch.Generator().manual_seed(11))
    new_g, old_g = torch.Generator().manual_seed(12), torch.Generator().manual_seed(12)
    for _ in range(2):  # the second batch checks that both consumed the same numbers
        assert torch.equal(photometric_jitter(images, PhotometricRanges(), new_g),
                           _old_photometric(images, PhotometricRanges(), old_g))


def _old_ema_update(ema: ModelEma, model, applied):
    d = ema.current_decay()
    live = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    for name, ema_value in ema.module.state_dict().items():
        value = live[name].detach()
        if name in params and ema_value.is_floating_point():
            weight = 1.0 - d if applied is None else (applied * (1.0 - d)).to(ema_value.dtype)
            ema_value.lerp_(value.to(ema_value.dtype), weight)
        else:
            ema_value.copy_(value)
    ema.updates += 1


def test_ema_matches_the_per_tensor_update():
    torch.manual_seed(13)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    new, old = ModelEma(model, 0.9), ModelEma(model, 0.9)
    for applied in (None, torch.tensor(1.0), torch.tensor(0.0), torch.tensor(1.0)):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(2, 3, 6, 6))  # moves the BatchNorm buffers
        new.update(model, applied)
        _old_ema_update(old, model, applied)
        for (name, a), b in zip(new.module.state_dict().items(), old.module.state_dict().values(), strict=False):
            assert torch.equal(a, b), name
    # Weights loaded in place (a resume) are what the next update reads.
    model.load_state_dict(copy.deepcopy(new.module.state_dict()))
    new.update(model)
    _old_ema_update(old, model, None)
    pairs = zip(new.module.state_dict().values(), old.module.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_precise_bn_matches_cumulative_momentum_none():
    parts = build_parts(RECIPES["default"], "tiny")
    inputs = [parts.prep.eval_batch(images, masks)[0] for images, masks, _ in loader_batches(3)]
    model = parts.step.model
    reference = copy.deepcopy(model)
    layers = batch_norms(reference)
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    reference.eval()
    for m in layers:
        m.train()
    with torch.no_grad():
        for x in inputs:
            reference(x)
    recompute_bn_stats(model, inputs, 3)
    for new, old in zip(batch_norms(model), layers, strict=False):
        assert torch.equal(new.running_mean, old.running_mean) and torch.equal(new.running_var, old.running_var)
        assert new.momentum == 0.1  # restored
