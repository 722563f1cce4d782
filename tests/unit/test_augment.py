"""Geometric augmentation (image and mask stay aligned, seeded) and the batch preparer's normalisation."""

from __future__ import annotations

import pytest
import torch

from dist_seg.config import IGNORE_INDEX, AugmentConfig
from dist_seg.train.augment import BatchPreparer, random_scale_crop_flip


def test_augmentation_keeps_image_and_mask_aligned():
    # The image encodes each pixel's class as its intensity, so after any flip/zoom the
    # mask must still describe the resampled image exactly (away from padding).
    torch.manual_seed(0)
    h, w = 32, 48
    mask = torch.randint(0, 5, (2, h // 8, w // 8))
    mask = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)  # blocky, so bilinear ~ nearest inside blocks
    x = mask.float().unsqueeze(1).repeat(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    out_x, out_y = random_scale_crop_flip(x, mask, (24, 40), AugmentConfig(hflip=True, scale_min=0.5, scale_max=2.0),
                                          gen)
    assert out_x.shape == (2, 3, 24, 40) and out_y.shape == (2, 24, 40)
    labelled = out_y != IGNORE_INDEX
    assert labelled.any()
    agree = (out_x[:, 0].round().long() == out_y)[labelled].float().mean()
    assert agree > 0.9
    # control: the same check against a mask that is off by a flip fails clearly
    assert (out_x[:, 0].round().long() == out_y.flip(-1))[labelled].float().mean() < 0.6
    # zooming out by 2 shows the image in a quarter of the output: the rest is unlabelled padding with value 0
    pad_x, pad_y = random_scale_crop_flip(x + 1, mask, (h, w), AugmentConfig(hflip=False, scale_min=0.5,
                                                                             scale_max=0.5), gen)
    padded = pad_y == IGNORE_INDEX
    assert padded.float().mean().item() == pytest.approx(0.75, abs=0.05)
    assert (pad_x[:, 0][padded] == 0).float().mean() > 0.9


def test_augmentation_is_reproducible_and_flip_changes_output():
    x = torch.rand(4, 3, 16, 16)
    y = torch.randint(0, 3, (4, 16, 16))
    aug = AugmentConfig(hflip=True, scale_min=1.0, scale_max=1.0)
    a = random_scale_crop_flip(x, y, (16, 16), aug, torch.Generator().manual_seed(1))
    b = random_scale_crop_flip(x, y, (16, 16), aug, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    flipped = [torch.equal(a[1][i], y[i].flip(-1)) for i in range(4)]
    same = [torch.equal(a[1][i], y[i]) for i in range(4)]
    assert all(f or s for f, s in zip(flipped, same, strict=False)) and any(flipped)


def test_batch_preparer_normalises_and_maps_void():
    prep = BatchPreparer(torch.device("cpu"), torch.channels_last, (8, 8), void_index=2)
    images = torch.full((1, 3, 8, 8), 128, dtype=torch.uint8)
    masks = torch.tensor([[0, 1, 2, 2, 0, 1, 0, 0]] * 8, dtype=torch.uint8).unsqueeze(0)
    x, y = prep.eval_batch(images, masks)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert abs(x[0, 0].mean().item() - (128 / 255 - 0.485) / 0.229) < 1e-4
    assert (y == IGNORE_INDEX).sum() == 16 and y.dtype == torch.int64
