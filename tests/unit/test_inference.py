"""The one inference module: upsampling, TTA (flip, multi-scale) and sliding-window inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from support.helpers import tiny_raw_config
from torch import nn

from dist_seg.checkpoint_file import save_checkpoint
from dist_seg.config import BackendConfig, config_from_dict, config_to_dict
from dist_seg.errors import ConfigError
from dist_seg.eval.inference import (
    InferenceSettings,
    Predictor,
    class_scores,
    normalise,
    parse_size,
    parse_tta,
    slide_logits,
    upsample_argmax,
)
from dist_seg.models import build_model
from dist_seg.runtime.device import resolve_runtime

CPU = resolve_runtime(BackendConfig(target="cpu", amp=False, compile=False), torch.device("cpu"), log=lambda _m: None)


class Pointwise(nn.Module):
    """Each output pixel depends on its own input pixel only: any window of it equals the whole."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return {"out": self.head(x)}


class MirrorSymmetricConv(nn.Module):
    """A 3x3 conv whose kernels are mirror-symmetric left-right: flipping the input flips the output."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, classes, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)

    def forward(self, x):
        return {"out": self.conv(x)}


def images(b: int = 2, h: int = 24, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_upsample_argmax_is_interpolate_then_argmax_and_identity_at_size():
    logits = torch.randn(2, 5, 6, 8, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(logits, size=(12, 20), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(upsample_argmax(logits, (12, 20)), expected)
    assert torch.equal(upsample_argmax(logits, (6, 8)), logits.argmax(1))


def test_whole_mode_is_the_network_size_forward_upsampled_to_the_frame():
    model = MirrorSymmetricConv().eval()
    batch = images(h=30, w=50)
    # Resized as the cache resizes training frames: PIL bilinear on the uint8 pixels.
    resized = np.stack([np.asarray(Image.fromarray(f).resize((20, 12), Image.BILINEAR))
                        for f in batch.permute(0, 2, 3, 1).numpy()])
    small = normalise(torch.from_numpy(resized).permute(0, 3, 1, 2), torch.device("cpu"), torch.contiguous_format)
    expected = F.interpolate(model(small)["out"], size=(30, 50), mode="bilinear", align_corners=False)
    got = class_scores(model, batch, InferenceSettings(), CPU, (12, 20))
    assert got.shape == (2, 4, 30, 50)
    torch.testing.assert_close(got, expected)


def test_flip_tta_of_a_flip_equivariant_model_changes_nothing():
    model = MirrorSymmetricConv().eval()
    batch = images()
    plain = class_scores(model, batch, InferenceSettings(), CPU, (24, 40))
    flipped = class_scores(model, batch, InferenceSettings(flip=True), CPU, (24, 40))
    # TTA averages softmax: equal to the plain softmax, so equal labels.
    torch.testing.assert_close(flipped, plain.softmax(1), rtol=1e-5, atol=1e-6)
    assert torch.equal(flipped.argmax(1), plain.argmax(1))


def test_flip_tta_does_change_an_asymmetric_model():
    model = Pointwise().eval()
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model.head = conv  # an ordinary 3x3 conv is not mirror-symmetric
    batch = images()
    plain = class_scores(model, batch, InferenceSettings(), CPU, (24, 40)).softmax(1)
    flipped = class_scores(model, batch, InferenceSettings(flip=True), CPU, (24, 40))
    assert not torch.allclose(plain, flipped, atol=1e-4)


def test_multi_scale_averages_the_softmax_of_each_scale():
    model = MirrorSymmetricConv().eval()
    batch = images(h=24, w=40)
    settings = InferenceSettings(scales=(0.5, 1.0))
    got = class_scores(model, batch, settings, CPU, (24, 40))
    parts = [class_scores(model, batch, InferenceSettings(), CPU, size).softmax(1) for size in ((12, 20), (24, 40))]
    torch.testing.assert_close(got, (parts[0] + parts[1]) / 2)


def test_slide_with_crop_equal_to_the_frame_equals_whole_inference():
    model = MirrorSymmetricConv().eval()
    batch = images(h=24, w=40)
    whole = class_scores(model, batch, InferenceSettings(), CPU, (24, 40))
    slide = class_scores(model, batch, InferenceSettings(mode="slide", crop=(24, 40)), CPU, (24, 40))
    torch.testing.assert_close(slide, whole)


def test_overlapping_windows_are_averaged_per_pixel():
    # For a pointwise model every window agrees with the whole frame, so the average over
    # overlapping windows equals it exactly only if each pixel is divided by its own count.
    model = Pointwise().eval()
    x = normalise(images(h=25, w=37), torch.device("cpu"), torch.contiguous_format)
    whole = model(x)["out"]
    for crop, stride in (((10, 16), (4, 5)), ((25, 8), (25, 3)), ((40, 40), (7, 7))):
        torch.testing.assert_close(slide_logits(model, x, crop, stride, CPU), whole)
    # And the frame is covered to the last row and column (the last window is aligned to the end).
    batch = images(h=25, w=37)
    got = class_scores(model, batch, InferenceSettings(mode="slide", crop=(16, 24), stride=(6, 9)), CPU, (16, 24))
    torch.testing.assert_close(got, whole)


def test_settings_parsing_and_errors():
    assert parse_tta("flip,scales=0.75,1.0,1.25") == (True, (0.75, 1.0, 1.25))
    assert parse_tta("scales=0.5,2,flip") == (True, (0.5, 2.0))
    assert parse_tta(None) == (False, (1.0,))
    assert parse_size("512x1024", "--crop") == (512, 1024)
    with pytest.raises(ConfigError, match="--tta: unknown item 'mirror'"):
        parse_tta("mirror")
    with pytest.raises(ConfigError, match="scales must be numbers"):
        parse_tta("scales=big")
    with pytest.raises(ConfigError, match="--crop must be HxW"):
        parse_size("512", "--crop")
    with pytest.raises(ConfigError, match="from 0.25 to 4"):
        InferenceSettings(scales=(0.0,))
    assert InferenceSettings(flip=True, scales=(0.75, 1.0)).describe() == "whole, flip, scales 0.75,1"


def test_predictor_from_checkpoint_labels_frames_of_any_size(tmp_path):
    raw = tiny_raw_config(tmp_path / "data", tmp_path / "run")
    raw["model"] = {"type": "fixtures_custom_model:LinearPixelNet"}
    cfg = config_from_dict(raw)
    model = build_model(cfg.model, cfg.dataset.num_classes)
    path = save_checkpoint({"model": model.state_dict(), "epoch": 1, "global_step": 1, "config": config_to_dict(cfg)},
                           tmp_path, "model.pth", keep=1)
    predictor = Predictor.from_checkpoint(path, torch.device("cpu"), CPU,
                                          custom_model="fixtures_custom_model:LinearPixelNet")
    frames = [np.asarray(images(1, 30, 40, seed=s)[0].permute(1, 2, 0)) for s in range(3)]
    frames.insert(1, np.asarray(images(1, 17, 23, seed=9)[0].permute(1, 2, 0)))
    ids = predictor.predict(frames)
    assert [i.shape for i in ids] == [(30, 40), (17, 23), (30, 40), (30, 40)]
    assert all(i.dtype == np.uint8 for i in ids)
    # The same frame alone or in a batch gets the same labels.
    alone = predictor.predict([frames[2]])[0]
    np.testing.assert_array_equal(alone, ids[2])
    batch = torch.from_numpy(frames[0]).permute(2, 0, 1)[None]
    np.testing.assert_array_equal(predictor.scores(batch).argmax(1)[0].numpy(), ids[0])
