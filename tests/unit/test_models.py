"""Models: DeepLabV3+ structure, torchvision types, registry, custom import paths, local weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from support.helpers import SUPPORT_DIR
from torch import nn

from dist_seg.config import ModelConfig, config_from_dict
from dist_seg.errors import ConfigError
from dist_seg.models import ACTIVATIONS, MODEL_TYPES, build_model

NUM_CLASSES = 5
SIZE = 64

torch.set_num_threads(1)  # the machine is shared; these inputs are tiny anyway


def _run(model: nn.Module, batch: int = 2) -> torch.Tensor:
    model.eval()
    torch.manual_seed(0)
    x = torch.randn(batch, 3, SIZE, SIZE)
    with torch.no_grad():
        return model(x)["out"]


def _deeplab(**kwargs) -> nn.Module:
    kwargs.setdefault("backbone", "resnet18")
    return build_model(ModelConfig(**kwargs), NUM_CLASSES)


# ----------------------------------------------------------------------------- DeepLabV3+


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "resnet101"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplabv3plus_output_shape_and_feature_stride(backbone, output_stride):
    model = _deeplab(backbone=backbone, output_stride=output_stride)
    seen = {}
    model.backbone.layer1.register_forward_hook(lambda m, i, o: seen.__setitem__("low", o.shape))
    model.backbone.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("high", o.shape))

    out = _run(model)

    assert out.shape == (2, NUM_CLASSES, SIZE, SIZE)
    assert seen["low"][-2:] == (SIZE // 4, SIZE // 4)
    assert seen["high"][-2:] == (SIZE // output_stride, SIZE // output_stride)


def test_output_stride_32_keeps_the_undilated_resnet():
    model = _deeplab(output_stride=32)
    seen = {}
    model.backbone.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("high", o.shape))
    assert _run(model, batch=1).shape == (1, NUM_CLASSES, SIZE, SIZE)
    assert seen["high"][-2:] == (SIZE // 32, SIZE // 32)
    assert all(m.dilation == (1, 1) for m in model.backbone.modules() if isinstance(m, nn.Conv2d))


def test_aspp_rates_double_at_output_stride_8():
    def rates(model):
        return [branch[0].dilation[0] for branch in model.head.aspp.branches[1:4]]

    assert rates(_deeplab(output_stride=16)) == [6, 12, 18]
    assert rates(_deeplab(output_stride=8)) == [12, 24, 36]


def test_other_resnet_families_get_the_right_decoder_widths():
    model = _deeplab(backbone="resnext50_32x4d")
    assert model.head.low_level_proj[0].in_channels == 256
    assert _run(model, batch=1).shape == (1, NUM_CLASSES, SIZE, SIZE)


def test_decoder_consumes_the_stride4_layer1_features():
    model = _deeplab().eval()
    seen = {}
    model.backbone.layer1.register_forward_hook(lambda m, i, o: seen.__setitem__("layer1", o))
    model.head.low_level_proj.register_forward_pre_hook(lambda m, args: seen.__setitem__("proj_in", args[0]))
    baseline = _run(model)
    assert seen["proj_in"] is seen["layer1"]

    # Perturb the low-level features on the decoder path only: the deep path is untouched.
    handle = model.head.low_level_proj.register_forward_pre_hook(lambda m, args: (args[0] + torch.randn_like(args[0]),))
    perturbed = _run(model)
    handle.remove()
    assert not torch.allclose(baseline, perturbed)
    assert torch.equal(_run(model), baseline)


def test_gradients_reach_low_level_projection_and_backbone():
    model = _deeplab().train()
    x = torch.randn(2, 3, SIZE, SIZE)
    target = torch.randint(0, NUM_CLASSES, (2, SIZE, SIZE))
    nn.functional.cross_entropy(model(x)["out"], target).backward()
    for param in (model.head.low_level_proj[0].weight, model.head.aspp.branches[0][0].weight,
                  model.backbone.conv1.weight, model.head.classifier.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("activation", sorted(set(ACTIVATIONS) - {"relu"}))
def test_activation_replaces_relu_in_backbone_and_head(activation):
    model = _deeplab(activation=activation)
    expected = type(ACTIVATIONS[activation]())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert any(isinstance(m, expected) for m in model.backbone.modules())
    assert any(isinstance(m, expected) for m in model.head.modules())
    assert _run(model, batch=1).shape == (1, NUM_CLASSES, SIZE, SIZE)


def test_unknown_activation_lists_choices():
    with pytest.raises(ConfigError, match=r"model\.activation.*'swish'.*relu, leaky_relu, silu"):
        _deeplab(activation="swish")


def test_separable_builds_depthwise_convs_in_aspp_and_decoder():
    def depthwise(module):
        return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]

    plain, separable = _deeplab(), _deeplab(separable=True)
    assert depthwise(plain.head) == []
    aspp_dw = depthwise(separable.head.aspp)
    assert sorted(m.dilation[0] for m in aspp_dw) == [6, 12, 18]
    assert len(depthwise(separable.head.fuse)) == 2
    assert sum(p.numel() for p in separable.head.parameters()) < sum(p.numel() for p in plain.head.parameters())
    assert _run(separable, batch=1).shape == (1, NUM_CLASSES, SIZE, SIZE)


def test_batch_of_one_works_in_eval_and_fails_in_training():
    model = _deeplab()
    assert _run(model, batch=1).shape == (1, NUM_CLASSES, SIZE, SIZE)
    # The known trap the loader avoids by dropping the last incomplete training batch.
    model.train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.randn(1, 3, SIZE, SIZE))


def test_aliases_build_deeplabv3plus():
    for alias in ("deeplabv3+", "deeplabv3_plus"):
        assert type(_deeplab(type=alias)).__name__ == "DeepLabV3Plus"


def test_unknown_backbone_suggests_nearest():
    with pytest.raises(ConfigError, match=r"model\.backbone.*did you mean 'resnet50'"):
        _deeplab(backbone="resnet05")


# ----------------------------------------------------------------------------- torchvision types


@pytest.mark.parametrize("model_type, backbone", [("deeplabv3", "resnet50"), ("fcn", "resnet50"),
                                                  ("lraspp", "mobilenet_v3_large")])
def test_torchvision_types_build_and_run(model_type, backbone):
    model = build_model(ModelConfig(type=model_type, backbone=backbone, activation="leaky_relu"), NUM_CLASSES)
    assert isinstance(model, (torchvision.models.segmentation.DeepLabV3, torchvision.models.segmentation.FCN,
                              torchvision.models.segmentation.LRASPP))
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert _run(model, batch=1).shape == (1, NUM_CLASSES, SIZE, SIZE)


@pytest.mark.parametrize("model_type, backbone", [("lraspp", "resnet50"), ("fcn", "resnet18"),
                                                  ("deeplabv3", "resnet34")])
def test_torchvision_types_reject_unsupported_backbones(model_type, backbone):
    with pytest.raises(ConfigError, match=rf"model\.backbone: {model_type} supports"):
        build_model(ModelConfig(type=model_type, backbone=backbone), NUM_CLASSES)


def test_torchvision_types_reject_separable():
    with pytest.raises(ConfigError, match=r"model\.separable"):
        build_model(ModelConfig(type="fcn", separable=True), NUM_CLASSES)


# ----------------------------------------------------------------------------- registry


def test_registry_names():
    assert {"deeplabv3plus", "deeplabv3+", "deeplabv3_plus", "deeplabv3", "fcn", "lraspp"} <= set(MODEL_TYPES)


def test_unknown_type_suggests_and_lists():
    with pytest.raises(ConfigError) as err:
        build_model(ModelConfig(type="deeplab3plus"), NUM_CLASSES)
    message = str(err.value)
    assert "did you mean 'deeplabv3plus'" in message
    for name in ("deeplabv3plus (deeplabv3+, deeplabv3_plus)", "deeplabv3", "fcn", "lraspp", "package.module:ClassName"):
        assert name in message


# ----------------------------------------------------------------------------- custom models


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SUPPORT_DIR))


def test_custom_model_from_config_file_keys_with_tensor_output(on_path, tmp_path):
    cfg = config_from_dict({
        "dataset": {"root": str(tmp_path)},
        "training": {"output_dir": str(tmp_path / "out")},
        "model": {"type": "fixtures_custom_model:TinyNet", "width": 3},
    })
    model = build_model(cfg.model, NUM_CLASSES)
    assert type(model).__name__ == "TinyNet" and model.width == 3
    assert model.classifier.out_channels == NUM_CLASSES
    out = model(torch.randn(1, 3, 16, 16))
    assert set(out) == {"out"} and out["out"].shape == (1, NUM_CLASSES, 16, 16)


def test_custom_model_dict_output_is_kept(on_path):
    model = build_model(ModelConfig(type="fixtures_custom_model:TinyNet", extra={"output": "dict"}), NUM_CLASSES)
    assert set(model(torch.randn(1, 3, 8, 8))) == {"out", "features"}


def test_custom_model_wrong_output_type(on_path):
    model = build_model(ModelConfig(type="fixtures_custom_model:TinyNet", extra={"output": "list"}), NUM_CLASSES)
    with pytest.raises(ConfigError, match="TinyNet.forward returned list"):
        model(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("model_type, extra, pattern", [
    ("no_such_pkg.models:Net", {}, r"cannot import module 'no_such_pkg\.models'.*PYTHONPATH"),
    ("fixtures_custom_model:TinyNett", {}, r"has no attribute 'TinyNett'.*classes defined there: .*\bTinyNet\b"),
    ("fixtures_custom_model:TinyNet", {"depth": 3},
     r"cannot construct fixtures_custom_model:TinyNet\(.*depth=3.*unexpected keyword"),
    ("fixtures_custom_model:", {}, r"not an import path"),
])
def test_custom_model_errors_name_the_import_path(on_path, model_type, extra, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_model(ModelConfig(type=model_type, extra=extra), NUM_CLASSES)


def test_custom_model_backbone_weights_load_into_its_backbone(on_path, tmp_path):
    source = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    torch.save(source.state_dict(), tmp_path / "tiny.pth")
    model = build_model(ModelConfig(type="fixtures_custom_model:TinyNet", backbone_weights=tmp_path / "tiny.pth"),
                        NUM_CLASSES)
    assert torch.equal(model.backbone[0].weight, source[0].weight)


# ----------------------------------------------------------------------------- backbone weights


def _assert_backbone_equals(backbone: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = backbone.state_dict()
    assert set(state) == set(reference)
    for key, value in reference.items():
        assert torch.equal(state[key], value), key


def test_torchvision_classification_weights_load_into_deeplabv3plus(tmp_path):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")  # includes fc.*, which is ignored

    model = _deeplab(output_stride=8, backbone_weights=tmp_path / "resnet18.pth")

    _assert_backbone_equals(model.backbone, {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")})
    assert not torch.equal(_deeplab().backbone.conv1.weight, resnet.conv1.weight)


def test_segmentation_state_dict_with_backbone_prefix_loads(tmp_path):
    trained = _deeplab()
    torch.save({"model": trained.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    model = _deeplab(backbone_weights=tmp_path / "ckpt.pth")
    _assert_backbone_equals(model.backbone, trained.backbone.state_dict())
    assert not torch.equal(model.head.classifier.weight, trained.head.classifier.weight)  # only the backbone


def test_mobilenet_classification_weights_load_into_lraspp(tmp_path):
    mobilenet = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(mobilenet.state_dict(), tmp_path / "mnv3.pth")
    model = build_model(ModelConfig(type="lraspp", backbone="mobilenet_v3_large",
                                    backbone_weights=tmp_path / "mnv3.pth"), NUM_CLASSES)
    assert torch.equal(model.backbone["0"][0].weight, mobilenet.features[0][0].weight)
    assert torch.equal(model.backbone["16"][0].weight, mobilenet.features[16][0].weight)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match=rf"model\.backbone_weights: file {missing} does not exist"):
        _deeplab(backbone_weights=missing)


def test_weights_for_another_architecture_name_file_and_keys(tmp_path):
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(ConfigError) as err:
        _deeplab(backbone_weights=tmp_path / "resnet34.pth")
    message = str(err.value)
    assert str(tmp_path / "resnet34.pth") in message
    assert "unexpected: layer1.2.conv1.weight" in message


def test_weights_with_wrong_shapes_are_reported(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"with another shape: conv1\.weight \(file \[32, 3, 7, 7\], model \[64, 3, 7, 7\]\)"):
        _deeplab(backbone_weights=tmp_path / "bad.pth")


@pytest.mark.parametrize("name, pattern", [("truncated.pth", r"cannot read .*truncated\.pth.*may be truncated"),
                                           ("notes.pth", r"cannot read .*notes\.pth"),
                                           ("list.pth", r"list\.pth does not hold a state dict")])
def test_unreadable_or_non_state_dict_files_are_clear_errors(tmp_path, name, pattern):
    torch.save(nn.Conv2d(3, 4, 3).state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match=pattern):
        _deeplab(backbone_weights=tmp_path / name)


def test_weights_need_a_backbone_submodule(tmp_path):
    torch.save(nn.Conv2d(3, 4, 3).state_dict(), tmp_path / "w.pth")
    # A factory function works as a custom type too; torchvision's resnet18 has no .backbone.
    with pytest.raises(ConfigError, match=r"torchvision\.models:resnet18 has no 'backbone' submodule"):
        build_model(ModelConfig(type="torchvision.models:resnet18", backbone_weights=tmp_path / "w.pth"), NUM_CLASSES)


# ----------------------------------------------------------------------------- default backbone, cheap check


@pytest.mark.parametrize("model_type, default", [("lraspp", "mobilenet_v3_large"), ("deeplabv3plus", "resnet50"),
                                                 ("fcn", "resnet50")])
def test_a_model_type_without_backbone_gets_its_own_default(tmp_path, model_type, default):
    cfg = config_from_dict({"dataset": {"root": "d"}, "training": {"output_dir": "o"},
                            "model": {"type": model_type}}).model
    assert cfg.backbone is None
    from dist_seg.models import check_model_config
    assert check_model_config(cfg, NUM_CLASSES).backbone == default
    if model_type == "lraspp":  # the case a new user hit: it used to demand a ResNet
        assert _run(build_model(cfg, NUM_CLASSES), batch=1).shape == (1, NUM_CLASSES, SIZE, SIZE)


@pytest.mark.parametrize("model, pattern", [
    ({"backbone": "resnet5"}, r"model\.backbone: 'resnet5'.*did you mean 'resnet50'"),
    ({"type": "unet"}, r"model\.type: unknown model type 'unet'"),
    ({"activation": "rellu"}, r"model\.activation: unknown activation 'rellu'"),
    ({"type": "lraspp", "backbone": "resnet50"}, r"model\.backbone: lraspp supports the backbones"),
    ({"type": "no_such_pkg.mod:Net"}, r"model\.type: cannot import module 'no_such_pkg\.mod'"),
    ({"backbone_weights": "missing.pth"}, r"model\.backbone_weights: file .*missing\.pth does not exist"),
])
def test_check_model_config_finds_every_model_error_without_building(tmp_path, model, pattern):
    from dist_seg.models import check_model_config
    cfg = config_from_dict({"dataset": {"root": "d"}, "training": {"output_dir": "o"}, "model": model},
                           base_dir=tmp_path).model
    with pytest.raises(ConfigError, match=pattern):
        check_model_config(cfg, NUM_CLASSES, (SIZE, SIZE))


def test_check_model_config_matches_weights_and_output_shape_on_the_meta_device(tmp_path):
    from dist_seg.models import check_model_config
    resnet = torchvision.models.resnet34(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "r34.pth")
    good = ModelConfig(backbone="resnet34", backbone_weights=tmp_path / "r34.pth")
    assert check_model_config(good, NUM_CLASSES, (SIZE, SIZE)) == good
    with pytest.raises(ConfigError, match="does not fit the backbone"):
        check_model_config(ModelConfig(backbone="resnet18", backbone_weights=tmp_path / "r34.pth"), NUM_CLASSES)


def test_a_custom_model_raising_in_its_constructor_is_a_config_error(on_path):
    with pytest.raises(ConfigError, match=r"model\.type: .*raised .*Error"):
        build_model(ModelConfig(type="fixtures_custom_model:TinyNet", extra={"width": -1}), NUM_CLASSES)
