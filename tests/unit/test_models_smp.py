"""model.type smp (the zoo extra): config checks, shapes at any input size, local encoder weights."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

pytest.importorskip("segmentation_models_pytorch", reason="the zoo extra is not installed (pip install -e '.[zoo]')")

from dist_seg.config import ModelConfig, config_from_dict  # noqa: E402
from dist_seg.errors import ConfigError  # noqa: E402
from dist_seg.models import build_model, check_model_config, describe_model  # noqa: E402
from dist_seg.models.smp_models import architectures  # noqa: E402

NUM_CLASSES = 5

torch.set_num_threads(1)  # the machine is shared; these inputs are tiny anyway


def smp(**kwargs) -> ModelConfig:
    return ModelConfig(type="smp", **kwargs)


def check(cfg: ModelConfig, size=(64, 64), batch_size: int = 2) -> ModelConfig:
    return check_model_config(cfg, NUM_CLASSES, size, batch_size)


def test_every_installed_architecture_passes_the_meta_check():
    # DPT needs a timm ViT; PAN's pyramid pooling needs more than a 2x2 deepest map.
    encoders = {"DPT": "tu-vit_tiny_patch16_224"}
    sizes = {"PAN": (128, 128)}
    names = sorted(architectures().values())
    assert {"Unet", "FPN", "Segformer", "DeepLabV3Plus"} <= set(names)
    for name in names:
        cfg = check(smp(arch=name, encoder=encoders.get(name, "resnet18")), sizes.get(name, (64, 64)))
        assert cfg.arch == name and cfg.backbone == cfg.encoder


def test_defaults_names_and_case():
    cfg = check(smp())
    assert (cfg.arch, cfg.encoder, cfg.backbone) == ("Unet", "resnet34", "resnet34")
    cfg = check(smp(arch="unetplusplus", encoder="resnet18"))
    assert cfg.arch == "UnetPlusPlus"
    assert describe_model(cfg) == "smp UnetPlusPlus with encoder resnet18"
    # model.backbone is accepted as the encoder's name
    assert check(smp(backbone="resnet18")).encoder == "resnet18"


@pytest.mark.parametrize("arch, encoder, size", [("Unet", "resnet18", (50, 70)), ("Segformer", "mit_b0", (48, 80)),
                                                 ("FPN", "resnet18", (33, 47))])
def test_logits_at_input_resolution_for_sizes_the_encoder_does_not_divide(arch, encoder, size):
    model = build_model(smp(arch=arch, encoder=encoder), NUM_CLASSES).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert isinstance(out, dict) and out["out"].shape == (2, NUM_CLASSES, *size)
    assert set(k.split(".")[0] for k in model.state_dict()) == {"backbone", "decoder", "segmentation_head"}


def test_unknown_arch_suggests_the_nearest_installed_one():
    with pytest.raises(ConfigError) as err:
        check(smp(arch="Segformr"))
    message = str(err.value)
    assert message.startswith("model.arch: ") and "did you mean 'Segformer'?" in message
    assert "UnetPlusPlus" in message and "\n" not in message


@pytest.mark.parametrize("encoder, suggestion", [("resnet19", "'resnet18'"), ("mit-b0", "'mit_b0'"),
                                                 ("convnext_tiny", "'tu-convnext_tiny'"),
                                                 ("tu-convnxt_tiny", "'tu-convnext_tiny'")])
def test_unknown_encoder_suggests_the_nearest_one(encoder, suggestion):
    with pytest.raises(ConfigError) as err:
        check(smp(encoder=encoder))
    message = str(err.value)
    assert message.startswith("model.encoder: ") and f"did you mean {suggestion}?" in message
    assert "\n" not in message and len(message) < 600


def test_image_size_the_encoder_cannot_take_names_the_key_and_fitting_sizes():
    with pytest.raises(ConfigError) as err:
        check(smp(arch="Segformer", encoder="mit_b0"), size=(48, 64))
    assert str(err.value).startswith("training.image_size: 48x64")
    assert "divisible by 32" in str(err.value) and "[32, 64] or [64, 64]" in str(err.value)
    check(smp(arch="Unet", encoder="resnet18"), size=(48, 64))  # Unet takes any size


def test_other_model_keys_that_do_not_apply():
    with pytest.raises(ConfigError, match="model.output_stride: smp Unet has a fixed output stride"):
        check(smp(output_stride=8))
    assert check(smp(arch="DeepLabV3Plus", encoder="resnet18", output_stride=8)).output_stride == 8
    with pytest.raises(ConfigError, match="model.output_stride: .*DeepLabV3 .*8 or 16"):
        check(smp(arch="DeepLabV3", encoder="resnet18", output_stride=32))
    with pytest.raises(ConfigError, match="model.separable"):
        check(smp(separable=True))
    with pytest.raises(ConfigError, match="model.backbone: for model.type smp the encoder is model.encoder"):
        check(smp(backbone="resnet50", encoder="resnet18"))
    with pytest.raises(ConfigError, match="model.arch: .*DPT.*Only Timm encoders"):
        check(smp(arch="DPT", encoder="resnet18"))


def test_config_refuses_arch_and_encoder_for_other_types_and_passes_them_to_custom_models(tmp_path):
    base = {"dataset": {"root": str(tmp_path)}, "training": {"output_dir": str(tmp_path / "o")}}
    with pytest.raises(ConfigError, match="model.encoder: applies to model.type smp only, not deeplabv3plus"):
        config_from_dict({**base, "model": {"type": "deeplabv3plus", "encoder": "resnet18"}})
    cfg = config_from_dict({**base, "model": {"type": "pkg.mod:Net", "encoder": "tiny", "depth": 3}})
    assert cfg.model.encoder is None and cfg.model.extra == {"encoder": "tiny", "depth": 3}
    cfg = config_from_dict({**base, "model": {"type": "smp", "arch": "FPN", "encoder": "resnet18"}})
    assert (cfg.model.arch, cfg.model.encoder) == ("FPN", "resnet18")


def test_torchvision_imagenet_file_loads_into_smp_resnet_encoder(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), path)  # fc.* included, as torchvision's download
    cfg = smp(arch="FPN", encoder="resnet18", backbone_weights=path)
    check(cfg)
    model = build_model(cfg, NUM_CLASSES)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_timm_classification_file_loads_into_tu_encoder(tmp_path):
    import timm

    path = tmp_path / "timm_resnet18.pth"
    reference = timm.create_model("resnet18", pretrained=False)
    torch.save(reference.state_dict(), path)  # classifier fc.* included
    model = build_model(smp(arch="Unet", encoder="tu-resnet18", backbone_weights=path), NUM_CLASSES)
    assert torch.equal(model.backbone.model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


def test_weights_of_another_encoder_are_refused_before_building(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ConfigError, match="model.backbone_weights: .* does not fit the backbone of smp Unet with "
                                          "encoder resnet18"):
        check(smp(arch="Unet", encoder="resnet18", backbone_weights=path))


def test_batch_of_one_is_checked_like_other_models():
    # SMP's ASPP pools to 1x1 before a BatchNorm: training with one sample per rank cannot work.
    with pytest.raises(ConfigError, match="training.batch_size: 1 cannot train smp DeepLabV3Plus"):
        check(smp(arch="DeepLabV3Plus", encoder="resnet18"), batch_size=1)
    check(smp(arch="Unet", encoder="resnet18"), batch_size=1)


def test_zoo_benchmark_counts_params_and_flops(tmp_path, capsys):
    from benchmarks.zoo import main as zoo_main

    out = tmp_path / "zoo.json"
    assert zoo_main(["--size", "64x64", "--pairs", "deeplabv3plus:resnet18", "smp:Segformer:mit_b0",
                     "smp:Unet:resnet81", "--json", str(out)]) == 0
    rows = {r["model"]: r for r in json.loads(out.read_text())}
    assert rows["smp Segformer with encoder mit_b0"]["params_m"] == pytest.approx(3.72, abs=0.05)
    assert rows["deeplabv3plus with backbone resnet18"]["gflops"] > 0
    assert "did you mean 'resnet18'" in rows["smp Unet resnet81"]["skipped"]
    assert "| smp Segformer with encoder mit_b0 |" in capsys.readouterr().out
