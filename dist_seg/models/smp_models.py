"""``model.type: smp``: the architectures and encoders of segmentation_models_pytorch (optional extra).

Install with ``pip install -e '.[zoo]'`` (segmentation-models-pytorch and timm). The model
section picks ``model.arch`` (one of SMP's architectures: Unet, FPN, Segformer, ...; default
Unet) and ``model.encoder`` (an SMP encoder name, or ``tu-<timm model>`` for any timm model;
default resnet34). Both lists are read from the installed packages, not from here.

Nothing is downloaded: models are built with ``encoder_weights=None``; pretrained encoder
weights come from a local file through ``model.backbone_weights`` like for every other type.

The SMP network is taken apart into the submodules dist_seg expects: ``backbone`` (SMP's
encoder, so ``backbone_weights``, ``init_from`` and checkpoints see ``backbone.*`` keys;
SMP's ResNet encoders have torchvision's names, so torchvision's ImageNet files fit),
``decoder`` and ``segmentation_head``. ``forward(x)`` returns ``{"out": logits}`` at the
input resolution. Architectures whose encoder needs sizes divisible by its output stride
(e.g. 32) get frames of other sizes (native-resolution evaluation, TTA scales, slide
windows, dynamic-size exports) zero-padded to the next multiple, and the logits cropped
back; the training size itself must be divisible (checked with the config).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import warnings
from functools import lru_cache
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, describe_raised
from .activations import replace_relu
from .registry import register

TYPE = "smp"
DEFAULT_ARCH = "Unet"
DEFAULT_ENCODER = "resnet34"  # SMP's own default
TIMM_PREFIX = "tu-"
INSTALL_HINT = "pip install -e '.[zoo]'"
_SHOWN = 12  # encoder names quoted in an error


def import_smp() -> ModuleType:
    """segmentation_models_pytorch, or a one-line ConfigError saying how to install the extra."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import segmentation_models_pytorch as smp
    except ImportError as exc:
        raise ConfigError(f"model.type: smp needs the optional zoo extra (segmentation-models-pytorch and timm), "
                          f"which is not installed ({exc}); install it with: {INSTALL_HINT}") from None
    return smp


@lru_cache(maxsize=1)
def architectures() -> dict[str, str]:
    """Installed SMP architectures: lower-case name -> class name (e.g. ``"unetplusplus"`` -> ``"UnetPlusPlus"``)."""
    smp = import_smp()
    return {key: cls.__name__ for key, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}


@lru_cache(maxsize=1)
def smp_encoders() -> tuple[str, ...]:
    """SMP's own encoder names (``tu-*`` timm encoders come on top)."""
    return tuple(import_smp().encoders.get_encoder_names())


@lru_cache(maxsize=1)
def timm_models() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def _suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
        close = [next(c for c in choices if c.lower() == close[0])] if close else []
    return f"did you mean {close[0]!r}? " if close else ""


def check_arch(name: str) -> str:
    """The SMP class name for ``name`` (case-insensitive); unknown names raise ConfigError with a suggestion."""
    archs = architectures()
    found = archs.get(name.lower())
    if found is not None:
        return found
    names = sorted(archs.values())
    raise ConfigError(f"model.arch: unknown segmentation_models_pytorch architecture {name!r}; "
                      f"{_suggest(name, names)}choose one of {', '.join(names)}")


def check_encoder(name: str) -> str:
    """``name`` if SMP or timm knows it; unknown names raise ConfigError with a suggestion."""
    if name.startswith(TIMM_PREFIX):
        import timm

        base = name[len(TIMM_PREFIX):]
        if base and timm.is_model(base.split(".", 1)[0]):
            return name
        close = difflib.get_close_matches(base.split(".", 1)[0], timm_models(), n=1, cutoff=0.6)
        hint = f"did you mean {TIMM_PREFIX + close[0]!r}? " if close else ""
        raise ConfigError(f"model.encoder: unknown timm model {base!r} (from {name!r}); {hint}"
                          "'tu-' encoders name any model of timm.list_models()")
    if name in smp_encoders():
        return name
    hint = _suggest(name, smp_encoders())
    if not hint and name in timm_models():
        hint = f"did you mean {TIMM_PREFIX + name!r}? (timm's {name}) "
    names = smp_encoders()
    shown = ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
    raise ConfigError(f"model.encoder: unknown segmentation_models_pytorch encoder {name!r}; {hint}choose one of "
                      f"SMP's encoders ({shown}; segmentation_models_pytorch.encoders.get_encoder_names() lists "
                      "them), or 'tu-<name>' for any timm model")


def complete_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with ``arch`` / ``encoder`` filled in and checked; ``backbone`` set to the encoder.

    ``model.backbone`` is accepted as another name for ``model.encoder`` (so messages, the
    run summary and the resume check, which speak of the backbone, name the encoder).
    """
    if cfg.encoder is not None and cfg.backbone is not None and cfg.backbone != cfg.encoder:
        raise ConfigError(f"model.backbone: for model.type smp the encoder is model.encoder; "
                          f"got model.backbone {cfg.backbone!r} and model.encoder {cfg.encoder!r}, remove model.backbone")
    arch = check_arch(cfg.arch or DEFAULT_ARCH)
    encoder = check_encoder(cfg.encoder or cfg.backbone or DEFAULT_ENCODER)
    return dataclasses.replace(cfg, arch=arch, encoder=encoder, backbone=encoder)


class SmpSegmenter(nn.Module):
    """An SMP network as dist_seg uses it: ``backbone`` (the encoder), ``decoder``, ``segmentation_head``."""

    def __init__(self, net: nn.Module, description: str) -> None:
        super().__init__()
        self.backbone = net.encoder
        self.decoder = net.decoder
        self.segmentation_head = net.segmentation_head
        # DPT's ViT encoder returns (features, prefix tokens), both for the decoder.
        self.token_decoder = type(net).__name__ == "DPT"
        # Input sizes must be multiples of this (1: any size): the encoder's output stride, as
        # SMP checks it; DPT's decoder also halves the stride-16 ViT tokens once more (stride 32).
        divisor = int(net.encoder.output_stride) if net.requires_divisible_input_shape else 1
        self.size_divisor = 2 * divisor if self.token_decoder else divisor
        self.description = description

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = x.shape[-2:]
        if self.size_divisor > 1:
            # (-n) % d is 0 for multiples: then an empty pad, so traced graphs have no branch.
            x = F.pad(x, (0, (-width) % self.size_divisor, 0, (-height) % self.size_divisor))
        features = self.backbone(x)
        decoded = self.decoder(*features) if self.token_decoder else self.decoder(features)
        logits = self.segmentation_head(decoded)
        return {"out": logits[..., :height, :width]}

    def check_image_size(self, image_size: tuple[int, int]) -> None:
        """Raise ConfigError naming ``training.image_size`` when the encoder cannot take it as it is."""
        d = self.size_divisor
        if d > 1 and (image_size[0] % d or image_size[1] % d):
            up = [-(-s // d) * d for s in image_size]
            down = [max(d, s // d * d) for s in image_size]
            raise ConfigError(f"training.image_size: {image_size[0]}x{image_size[1]} (HxW) does not fit "
                              f"{self.description}: its encoder needs heights and widths divisible by {d} "
                              f"(its output stride); use e.g. {list(down)} or {list(up)}")
        was_training = self.training
        try:  # shapes only: the model is on the meta device here
            with torch.no_grad():
                self.eval()(torch.empty(1, 3, *image_size, device=next(self.parameters()).device))
        except Exception as exc:  # noqa: BLE001 - encoders fail in many ways (asserts, shape errors)
            raise ConfigError(f"training.image_size: {self.description} cannot take {image_size[0]}x{image_size[1]} "
                              f"(HxW) inputs: {describe_raised(exc)}; try another size or model.encoder") from None
        finally:
            self.train(was_training)

    def adapt_backbone_state(self, state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
        """A classification file's entries renamed for this encoder: timm's (``tu-*``) sit under
        ``model.`` in SMP's wrapper, and modules the feature extractor lacks (the classifier
        head, final pooling) are dropped."""
        if {k.split(".", 1)[0] for k in expected} == {"model"} and not any(k.startswith("model.") for k in state):
            state = {f"model.{k}": v for k, v in state.items()}

        def root(key: str) -> str:  # the top-level module (inside timm's model.)
            return ".".join(key.split(".", 2)[:2]) if key.startswith("model.") else key.split(".", 1)[0]

        modules = {root(k) for k in expected}
        kept = {k: v for k, v in state.items() if root(k) in modules}
        return kept if kept else state


@register(TYPE, default_backbone=DEFAULT_ENCODER, complete=complete_config)
def build_smp(cfg: ModelConfig, num_classes: int) -> SmpSegmenter:
    """The SMP ``model.arch`` with ``model.encoder``, random weights (nothing is downloaded)."""
    smp = import_smp()
    cfg = complete_config(cfg)
    description = f"smp {cfg.arch} with encoder {cfg.encoder}"
    if cfg.separable:
        raise ConfigError("model.separable: only deeplabv3plus has separable convolutions; remove it or set it "
                          "to false for model.type smp")
    cls = getattr(smp, cfg.arch)
    kwargs: dict[str, Any] = {"encoder_name": cfg.encoder, "encoder_weights": None, "in_channels": 3,
                              "classes": num_classes, "activation": None}
    params = inspect.signature(cls.__init__).parameters
    if "encoder_output_stride" in params:
        kwargs["encoder_output_stride"] = cfg.output_stride
    elif cfg.output_stride != ModelConfig.output_stride:
        raise ConfigError(f"model.output_stride: smp {cfg.arch} has a fixed output stride; remove the key "
                          "(DeepLabV3, DeepLabV3Plus and PAN take it)")
    if cfg.arch == "DPT":
        kwargs["dynamic_img_size"] = True  # timm ViTs otherwise take only their pretraining size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notes about timm- encoders and readout modes
            try:
                net = cls(**kwargs)
            except (NotImplementedError, RuntimeError) as exc:
                # Some encoders read tensor values while building (mit_b*: drop-path rates via
                # .item()), which the meta device cannot; build those on the CPU and move them.
                if "meta" not in str(exc):
                    raise
                with torch.device("cpu"):
                    net = cls(**kwargs)
                net = net.to("meta")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - SMP and timm raise ValueError, KeyError, AssertionError, ...
        key = "model.output_stride" if "output stride" in str(exc).lower() else "model.arch"
        raise ConfigError(f"{key}: segmentation_models_pytorch cannot build {cfg.arch} with encoder "
                          f"{cfg.encoder!r} (output stride {kwargs.get('encoder_output_stride', 'fixed')}): "
                          f"{describe_raised(exc)}; pick another model.arch / model.encoder pair") from None
    return SmpSegmenter(replace_relu(net, cfg.activation), description)
