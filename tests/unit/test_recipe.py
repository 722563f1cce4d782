"""Recipe building blocks: photometric augmentation, EMA, OHEM / Dice / Lovász, AMP policy, precise BN, init_from."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dist_seg.config import IGNORE_INDEX, ModelConfig
from dist_seg.errors import CheckpointError
from dist_seg.models import build_model
from dist_seg.models.init_from import init_from
from dist_seg.runtime import amp_policy
from dist_seg.train.ema import ModelEma, ema_weights
from dist_seg.train.losses import OhemCrossEntropy, RecipeLoss, dice_loss, lovasz_softmax
from dist_seg.train.photometric import PhotometricRanges, photometric_jitter
from dist_seg.train.precise_bn import batch_norms, bn_eval_train_gap, recompute_bn_stats


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.01), nn.ReLU(),
                         nn.Conv2d(4, 3, 1))


# ----------------------------------------------------------------------------- photometric


def _two_region_batch(b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images made of two flat colours, and the mask saying which pixel has which."""
    mask = torch.zeros(b, 8, 8, dtype=torch.long)
    mask[:, :, 4:] = 1
    colours = torch.tensor([[0.2, 0.5, 0.7], [0.8, 0.3, 0.1]])
    images = colours[mask].permute(0, 3, 1, 2).contiguous()
    return images, mask


def test_photometric_changes_images_per_sample_and_keeps_pixels_in_place():
    images, mask = _two_region_batch()
    mask_before = mask.clone()
    out = photometric_jitter(images, PhotometricRanges(), _generator(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert not torch.allclose(out, images)
    # Identical inputs, different draws per sample.
    assert not torch.allclose(out[0], out[1])
    # Colour maps only: each mask region is still one flat colour, so labels stay aligned.
    for region in (0, 1):
        pixels = out.permute(0, 2, 3, 1)[mask == region].view(images.shape[0], -1, 3)
        assert torch.allclose(pixels, pixels[:, :1].expand_as(pixels), atol=1e-6)
    assert torch.equal(mask, mask_before)


def test_photometric_is_reproducible_from_the_seed():
    images, _ = _two_region_batch()
    a = photometric_jitter(images, PhotometricRanges(), _generator(5))
    b = photometric_jitter(images, PhotometricRanges(), _generator(5))
    c = photometric_jitter(images, PhotometricRanges(), _generator(6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_photometric_off_is_identity_and_draws_the_same_numbers():
    images, _ = _two_region_batch()
    g_off, g_on = _generator(1), _generator(1)
    off = photometric_jitter(images, PhotometricRanges(0, 0, 0, 0, 0), g_off)
    photometric_jitter(images, PhotometricRanges(), g_on)
    assert torch.equal(off, images)
    assert torch.equal(g_off.get_state(), g_on.get_state())


def test_photometric_single_properties_act_as_documented():
    images = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1).repeat(2, 1, 4, 4)
    grey = photometric_jitter(images, PhotometricRanges(0, 0, 0.5, 0, 0), _generator(3))
    # Saturation alone keeps luminance (away from clipping) and changes colours.
    assert not torch.allclose(grey, images)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((grey * luma).sum(1), (images * luma).sum(1), atol=1e-5)
    with pytest.raises(ValueError, match="brightness"):
        PhotometricRanges(brightness=1.5)
    with pytest.raises(ValueError, match="float images"):
        photometric_jitter(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), PhotometricRanges())


# ----------------------------------------------------------------------------- EMA


def _set_weights(model: nn.Module, seed: int) -> None:
    g = _generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        for b in model.buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=g))


def test_ema_equals_hand_computed_average_over_three_steps():
    model = _tiny_net()
    _set_weights(model, 0)
    ema = ModelEma(model, decay=0.5, warmup=True)
    expected = {k: v.clone() for k, v in model.named_parameters()}
    for n, seed in enumerate((1, 2, 3)):
        _set_weights(model, seed)
        d = min(0.5, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(model)
        expected = {k: d * expected[k] + (1 - d) * p.detach() for k, p in model.named_parameters()}
    ema_state = ema.module.state_dict()
    for key, value in expected.items():
        assert torch.allclose(ema_state[key], value, atol=1e-6), key
    # Buffers (BatchNorm statistics) are copied, not averaged.
    for key, value in model.named_buffers():
        assert torch.equal(ema_state[key], value), key
    assert ema.updates == 3


def test_ema_without_warmup_uses_the_fixed_decay():
    ema = ModelEma(_tiny_net(), decay=0.9, warmup=False)
    assert ema.current_decay() == 0.9
    with pytest.raises(ValueError, match="decay"):
        ModelEma(_tiny_net(), decay=1.0)


def test_ema_survives_a_state_dict_round_trip_exactly(tmp_path):
    model = _tiny_net()
    ema = ModelEma(model, decay=0.99)
    for seed in (1, 2):
        _set_weights(model, seed)
        ema.update(model)
    path = tmp_path / "ema.pth"
    torch.save(ema.state_dict(), path)
    resumed = ModelEma(_tiny_net(), decay=0.99)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.updates == ema.updates and resumed.current_decay() == ema.current_decay()
    _set_weights(model, 3)
    ema.update(model)
    resumed.update(model)
    for (k, a), (_, b) in zip(ema.module.state_dict().items(), resumed.module.state_dict().items(), strict=False):
        assert torch.equal(a, b), k


def test_ema_weights_context_swaps_and_restores():
    model = _tiny_net()
    ema = ModelEma(model, decay=0.5)
    _set_weights(model, 9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with ema_weights(model, ema) as swapped:
        for k, v in swapped.state_dict().items():
            assert torch.equal(v, ema.module.state_dict()[k])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


# ----------------------------------------------------------------------------- losses


def _logits_for(target: torch.Tensor, classes: int, margin: float) -> torch.Tensor:
    """Logits whose argmax is ``target`` (ignored pixels get class 0) with the given margin."""
    logits = torch.zeros(*target.shape, classes)
    logits.scatter_(-1, target.clamp(0, classes - 1).unsqueeze(-1), margin)
    return logits.permute(0, 3, 1, 2).contiguous()


def test_ohem_keeps_the_hard_pixels_and_at_least_min_kept():
    target = torch.zeros(1, 2, 5, dtype=torch.long)
    target[0, 1] = IGNORE_INDEX  # 5 ignored pixels
    logits = torch.zeros(1, 3, 2, 5)
    # True-class probabilities rising over the 5 labelled pixels: 3 of them below 0.7.
    for i, margin in enumerate((-2.0, -1.0, 0.5, 2.0, 4.0)):
        logits[0, 0, 0, i] = margin
    probs = torch.softmax(logits, 1)[0, 0, 0]
    assert (probs < 0.7).sum() == 3
    hard = OhemCrossEntropy(thresh=0.7, min_kept=2).kept(logits, target)
    assert hard[0, 0].tolist() == [True, True, True, False, False] and not hard[0, 1].any()
    # min_kept above the hard count keeps exactly the 4 lowest-probability labelled pixels.
    four = OhemCrossEntropy(thresh=0.7, min_kept=4).kept(logits, target)
    assert four[0, 0].tolist() == [True, True, True, True, False] and int(four.sum()) == 4
    # More than there are labelled pixels: all 5 labelled ones, never an ignored one.
    everything = OhemCrossEntropy(thresh=0.7, min_kept=100).kept(logits, target)
    assert int(everything.sum()) == 5 and not everything[0, 1].any()


def test_ohem_loss_is_the_weighted_mean_over_kept_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.randint(0, 4, (2, 3, 3))
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5])
    ohem = OhemCrossEntropy(weight=weight, thresh=0.5, min_kept=5)
    keep = ohem.kept(logits, target)
    ce = nn.functional.cross_entropy(logits, target, weight=weight, reduction="none")
    expected = (ce * keep).sum() / (weight[target] * keep).sum()
    loss = ohem(logits, target)
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("loss_fn", [dice_loss, lovasz_softmax])
def test_dice_and_lovasz_are_zero_when_perfect_and_differentiable(loss_fn):
    target = torch.randint(0, 3, (2, 6, 6), generator=_generator(4))
    target[0, 0, 0] = IGNORE_INDEX
    perfect = _logits_for(target, 3, margin=50.0)
    assert loss_fn(perfect, target).item() == pytest.approx(0.0, abs=1e-4)
    wrong = _logits_for((target + 1) % 3, 3, margin=50.0)
    assert loss_fn(wrong, target).item() > 0.5
    logits = torch.randn(2, 3, 6, 6, generator=_generator(5), requires_grad=True)
    loss = loss_fn(logits, target)
    assert 0.0 < loss.item() <= 1.0 + 1e-6
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_recipe_loss_adds_the_weighted_terms():
    logits = torch.randn(1, 3, 4, 4, generator=_generator(6))
    target = torch.randint(0, 3, (1, 4, 4), generator=_generator(7))
    ce = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    combined = RecipeLoss(ce, dice_weight=0.5, lovasz_weight=0.25)(logits, target)
    expected = ce(logits, target) + 0.5 * dice_loss(logits, target) + 0.25 * lovasz_softmax(logits, target)
    assert torch.allclose(combined, expected)


# ----------------------------------------------------------------------------- AMP policy


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
    ({"avx2", "amx_bf16", "amx_tile"}, torch.bfloat16),
    ({"avx2", "fma", "avx512f"}, None),
    (set(), None),
])
def test_auto_amp_dtype_on_cpu_follows_the_bf16_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(amp_policy, "cpu_flags", lambda: frozenset(flags))
    assert amp_policy.resolve_amp_dtype(torch.device("cpu")) is expected


@pytest.mark.parametrize("native_bf16, expected, scaler", [(True, torch.bfloat16, False),
                                                           (False, torch.float16, True)])
def test_auto_amp_dtype_on_gpu(monkeypatch, native_bf16, expected, scaler):
    calls = []

    def is_bf16_supported(including_emulation=True):
        calls.append(including_emulation)
        return native_bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    dtype = amp_policy.resolve_amp_dtype(torch.device("cuda", 0))
    assert dtype is expected and amp_policy.needs_grad_scaler(dtype) is scaler
    assert calls == [False]  # emulated bf16 does not count


def test_cpu_flags_reads_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert amp_policy.cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    assert amp_policy.cpu_flags(tmp_path / "missing") == frozenset()
    assert amp_policy.resolve_amp_dtype(torch.device("mps")) is None


# ----------------------------------------------------------------------------- precise BN


def _shifted_batches(n: int, seed: int) -> list[torch.Tensor]:
    g = _generator(seed)
    return [torch.randn(4, 3, 6, 6, generator=g) * 3.0 + 5.0 for _ in range(n)]


def test_precise_bn_sets_running_stats_to_the_average_over_batches():
    model = _tiny_net()
    batches = _shifted_batches(3, 0)
    model.train()
    assert recompute_bn_stats(model, iter(batches), num_batches=2) == 2
    bn = batch_norms(model)[0]
    conv = model[0]
    with torch.no_grad():
        feats = [conv(x) for x in batches[:2]]
    expected_mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    expected_var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, expected_var, atol=1e-4)
    assert bn.momentum == 0.01 and model.training


def test_bn_gap_detects_stale_statistics_and_changes_nothing():
    torch.manual_seed(0)
    model = _tiny_net().eval()
    batch = _shifted_batches(1, 1)[0]
    # Fresh running statistics (mean 0, var 1) are far from inputs around 5 +- 3.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    stale = bn_eval_train_gap(model, batch)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not model.training
    recompute_bn_stats(model, [batch], num_batches=1)
    fixed = bn_eval_train_gap(model, batch, target=torch.zeros(4, 6, 6, dtype=torch.long))
    assert fixed.agreement > stale.agreement and fixed.agreement > 0.99 and not fixed.bad
    assert fixed.eval_pixel_acc is not None and "agree" in fixed.describe()


# ----------------------------------------------------------------------------- init_from


def _lraspp(classes: int) -> nn.Module:
    return build_model(ModelConfig(type="lraspp", backbone="mobilenet_v3_large"), classes)


def test_init_from_loads_matching_weights_and_reinitialises_other_heads(tmp_path):
    torch.manual_seed(0)
    source = _lraspp(13)
    # A dist_seg checkpoint (key "model") saved from a compiled model inside DDP, with an extra head.
    state = {f"module._orig_mod.{k}": v for k, v in source.state_dict().items()}
    state["module._orig_mod.aux_classifier.weight"] = torch.zeros(2)
    torch.save({"model": state, "epoch": 3}, tmp_path / "ckpt.pth")
    torch.manual_seed(1)
    target = _lraspp(12)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    messages = []
    report = init_from(target, tmp_path / "ckpt.pth", log=messages.append)
    heads = {"classifier.low_classifier.weight", "classifier.low_classifier.bias",
             "classifier.high_classifier.weight", "classifier.high_classifier.bias"}
    assert set(report.reinitialised) == heads
    assert report.skipped == ("aux_classifier.weight",) and report.missing == ()
    after = target.state_dict()
    for key in report.loaded:
        assert torch.equal(after[key], source.state_dict()[key]), key
    for key in heads:
        assert torch.equal(after[key], fresh[key]), key
    assert len(messages) == 1 and "classifier.high_classifier" in messages[0]


def test_init_from_plain_state_dict_same_classes_loads_everything(tmp_path):
    source = _lraspp(5)
    torch.save(source.state_dict(), tmp_path / "plain.pth")
    target = _lraspp(5)
    report = init_from(target, tmp_path / "plain.pth", log=lambda _m: None)
    assert report.reinitialised == () and len(report.loaded) == len(source.state_dict())
    x = torch.rand(1, 3, 32, 32)
    source.eval(), target.eval()
    assert torch.equal(source(x)["out"], target(x)["out"])


def test_init_from_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        init_from(_tiny_net(), tmp_path / "nope.pth")
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth.*matches"):
        init_from(_tiny_net(), tmp_path / "other.pth")


class _Placement:
    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size


class _IdentityPrep:
    def eval_batch(self, images, masks):
        return images, masks


@pytest.mark.parametrize("frames, batch_size, world", [(9, 4, 2), (17, 4, 2), (15, 4, 2), (5, 4, 1), (3, 2, 2)])
def test_precise_bn_batches_are_equal_across_ranks_and_never_a_single_frame(frames, batch_size, world):
    from dist_seg.train.precise_bn import training_batches

    data = [(torch.full((3, 2, 2), float(i)), torch.zeros(2, 2, dtype=torch.long), f"f{i}") for i in range(frames)]
    per_rank = [[x.shape[0] for x, _ in training_batches(data, _IdentityPrep(), batch_size, 8, _Placement(r, world))]
                for r in range(world)]
    assert all(sizes == per_rank[0] for sizes in per_rank)  # collectives need the same count on every rank
    assert all(size >= 2 for sizes in per_rank for size in sizes)  # BatchNorm cannot train on one frame
