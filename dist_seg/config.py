"""Typed configuration: dataclasses, defaults, validation and ``--set`` overrides.

The YAML file is parsed with ``yaml.safe_load`` into plain data, overrides are applied to
that data, and one generic walker turns it into the dataclasses below, checking every
key and type on the way. Every problem raises :class:`~dist_seg.errors.ConfigError`
naming the dotted key and the fix, before any work starts.

The original single-GPU pipeline's keys keep their names, meanings and defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import atomic
from .errors import ConfigError

REQUIRED: Any = dataclasses.MISSING


@dataclass(frozen=True)
class ClassSpec:
    """One semantic class: its name and the RGB colour it has in label PNGs."""

    name: str
    color: tuple[int, int, int]


# DAVID class order is fixed by the original pipeline; colours are CARLA <= 0.9.9's
# CityScapes palette as stored in DAVID's label PNGs.
DAVID_CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("traffic_sign", (220, 220, 0)),
    ClassSpec("building", (70, 70, 70)),
    ClassSpec("fence", (190, 153, 153)),
    ClassSpec("other", (250, 170, 160)),
    ClassSpec("pedestrian", (220, 20, 60)),
    ClassSpec("pole", (153, 153, 153)),
    ClassSpec("road_line", (157, 234, 50)),
    ClassSpec("road", (128, 64, 128)),
    ClassSpec("sidewalk", (244, 35, 232)),
    ClassSpec("vegetation", (107, 142, 35)),
    ClassSpec("car", (0, 0, 142)),
    ClassSpec("wall", (102, 102, 156)),
    ClassSpec("void", (0, 0, 0)),
)

# Label value for pixels that count nowhere (unknown colours mapped away, the void class
# when it is ignored, padding from augmentation).
IGNORE_INDEX = 255


@dataclass
class SplitConfig:
    """How sequences are split into train / val / test. Named lists win over fractions."""

    val_fraction: float = 0.15
    test_fraction: float = 0.1
    val: list[str] | None = None
    test: list[str] | None = None


@dataclass
class DatasetConfig:
    """Where the data is and how to read it."""

    root: Path = REQUIRED
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    images: str = "Images"
    labels: str = "Labels"
    # A list of {name, color} or a path to a YAML/JSON file holding that list.
    classes: list[ClassSpec] = field(default_factory=lambda: list(DAVID_CLASSES))
    # Name of the class ignored in the loss and in mIoU; null = every class is learned.
    void_class: str | None = None
    mask_format: Literal["rgb", "index"] = "rgb"
    # What to do with label colours not in the palette: fail, or map them to IGNORE_INDEX.
    unknown_colors: Literal["error", "void"] = "error"
    # A separate root with its own Images/Labels used as the test split (DAVID's Test/).
    test_root: Path | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    use_cache: bool = True
    cache_images: bool = True
    # [H, W] of the cached images and masks; null = training.image_size.
    cache_size: tuple[int, int] | None = None
    # null = $DIST_SEG_CACHE or ~/.cache/dist_seg, keyed by the dataset root.
    cache_dir: Path | None = None
    # Processes used to build the cache; null = all cores.
    cache_workers: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def void_index(self) -> int | None:
        """Class id ignored in loss and metrics, or None."""
        return None if self.void_class is None else self.class_names.index(self.void_class)


@dataclass
class ModelConfig:
    """Which network to build. Custom models (``type: pkg.module:Class``) get ``extra`` as kwargs."""

    type: str = "deeplabv3plus"
    backbone: str = "resnet50"
    activation: str = "relu"
    output_stride: int = 16
    separable: bool = False
    # Local file with backbone (or full-model) weights; never downloaded.
    backbone_weights: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_custom(self) -> bool:
        return ":" in self.type


@dataclass
class BackendConfig:
    """Device, precision, compilation and process-group settings."""

    target: Literal["auto", "cuda", "rocm", "cpu"] = "auto"
    amp: bool = True
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool | Literal["auto"] = "auto"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    cudnn_benchmark: bool = True
    dist_backend: Literal["auto", "nccl", "gloo"] = "auto"
    # Seconds a collective may wait for a peer before the run fails instead of hanging.
    dist_timeout_s: float = 600.0
    # Seconds other ranks wait while each node's local rank 0 decodes and caches the dataset.
    prepare_timeout_s: float = 7200.0
    sync_bn: bool = False


@dataclass
class AugmentConfig:
    """Batch augmentation applied on the device to images and masks alike."""

    hflip: bool = True
    scale_min: float = 0.5
    scale_max: float = 2.0


@dataclass
class TrainingConfig:
    """Optimisation, schedule, data loading, checkpointing."""

    output_dir: Path = REQUIRED
    batch_size: int = 4
    val_batch_size: int = 4
    epochs: int = 80
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9
    lr_schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = 0.9
    warmup_iters: int = 0
    min_lr: float = 0.0
    grad_clip_norm: float | None = None
    grad_accum_steps: int = 1
    class_weighting: Literal["none", "inverse", "inverse_sqrt", "median_frequency"] = "inverse_sqrt"
    num_workers: int = 4
    prefetch_factor: int = 2
    persistent_workers: bool = True
    # [H, W] fed to the network.
    image_size: tuple[int, int] = (512, 512)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_interval: int = 1
    visualization_interval: int = 5
    num_visualizations: int = 4
    max_checkpoints: int = 5
    seed: int = 1337
    deterministic: bool = False
    force_resplit: bool = False
    # A checkpoint path, "auto" (latest in output_dir/checkpoints, if any) or null.
    resume_from_checkpoint: Literal["auto"] | Path | None = None
    # Stop after this many optimizer steps in total (smoke runs, benchmarks); null = all epochs.
    # The LR schedule still spans training.epochs, so a stopped run can be resumed exactly.
    max_steps: int | None = None
    log_interval: int = 20


@dataclass
class TelemetryConfig:
    """Monitoring: TensorBoard, VRAM sampling, console progress."""

    tensorboard: bool = True
    vram_sampler: Literal["auto", "nvml", "amdsmi", "none"] = "auto"
    vram_interval_s: float = 1.0
    progress: Literal["auto", "bar", "log", "none"] = "auto"


@dataclass
class Config:
    """The whole run configuration."""

    dataset: DatasetConfig = REQUIRED
    training: TrainingConfig = REQUIRED
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config, apply ``KEY=VALUE`` overrides, validate, resolve relative paths.

    Relative paths resolve from the config file's directory.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass the path to a YAML file such as configs/demo.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with dataset:, training:, ... sections, not {type(raw).__name__}")
    apply_overrides(raw, parse_overrides(overrides))
    return config_from_dict(raw, base_dir=path.resolve().parent, source=str(path))


def parse_overrides(items: typing.Iterable[str]) -> list[tuple[str, Any]]:
    """Parse ``a.b=value`` strings; values are YAML scalars (``2`` -> int, ``[1, 2]`` -> list)."""
    parsed = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.epochs=2")
        try:
            parsed.append((key.strip(), yaml.safe_load(value)))
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not a YAML scalar: {exc}") from exc
    return parsed


def apply_overrides(raw: dict, overrides: typing.Iterable[tuple[str, Any]]) -> None:
    """Set dotted keys in the raw config mapping, creating sections as needed."""
    for key, value in overrides:
        parts = key.split(".")
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value


def config_from_dict(raw: dict, base_dir: Path | None = None, source: str = "config") -> Config:
    """Build and validate a :class:`Config` from plain data (a parsed YAML file or a checkpoint)."""
    builder = _Builder(base_dir=base_dir, source=source)
    cfg = builder.build(Config, raw, "")
    _validate(cfg, source)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain, YAML/JSON-safe data (paths as strings, tuples as lists) that round-trips."""

    def convert(value: Any) -> Any:
        if isinstance(value, ModelConfig):
            out = {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "extra"}
            out.update(convert(value.extra))
            return out
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic.write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if tp is Path:
        return "path"
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


class _Builder:
    """Turns plain data into dataclasses, checking keys and types, resolving paths."""

    def __init__(self, base_dir: Path | None, source: str) -> None:
        self.base_dir = base_dir
        self.source = source

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.source}: {key}: {message}")

    def build(self, cls: type, raw: Any, prefix: str) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.fail(prefix or "top level", f"expected a mapping of keys, got {raw!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        custom_model = cls is ModelConfig and ":" in str(raw.get("type", ""))
        for key, value in raw.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in fields:
                if custom_model:
                    extra[key] = value
                    continue
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
                hint = f"did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else (
                    f"valid keys here: {', '.join(fields)}")
                self.fail(dotted, f"unknown key; {hint}")
            kwargs[key] = self.convert(hints[key], value, dotted)
        for name, f in fields.items():
            if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                dotted = f"{prefix}.{name}" if prefix else name
                self.fail(dotted, "required key is missing; add it to the config file or pass --set "
                          f"{dotted}=...")
        if cls is ModelConfig:
            kwargs["extra"] = extra
        return cls(**kwargs)

    def convert(self, tp: Any, value: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            members = list(typing.get_args(tp))
            if value is None:
                if type(None) in members:
                    return None
                self.fail(key, f"must not be null; expected {_type_name(tp)}")
            errors = []
            for member in members:
                if member is type(None):
                    continue
                try:
                    return self.convert(member, value, key)
                except ConfigError as exc:
                    errors.append(exc)
            self.fail(key, f"expected {_type_name(tp)}, got {value!r}")
        if tp is ClassSpec:
            return self.class_spec(value, key)
        if origin is list and typing.get_args(tp)[0] is ClassSpec and isinstance(value, (str, Path)):
            return self.class_file(value, key)
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, key)
        if origin is Literal:
            choices = typing.get_args(tp)
            if isinstance(value, str) and value in choices:
                return value
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}{hint}")
        if origin is list:
            if not isinstance(value, list):
                self.fail(key, f"expected a list, got {value!r}")
            (item_tp,) = typing.get_args(tp)
            return [self.convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is tuple:
            item_types = typing.get_args(tp)
            if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
                self.fail(key, f"expected a list of {len(item_types)} values, got {value!r}")
            return tuple(self.convert(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(item_types, value)))
        if origin is dict:
            if not isinstance(value, dict):
                self.fail(key, f"expected a mapping, got {value!r}")
            return dict(value)
        if tp is bool:
            if isinstance(value, bool):
                return value
            self.fail(key, f"expected true or false, got {value!r}")
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            self.fail(key, f"expected an integer, got {value!r}")
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept what float() accepts.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            self.fail(key, f"expected a number, got {value!r}")
        if tp is str:
            if isinstance(value, str):
                return value
            self.fail(key, f"expected a string, got {value!r}")
        if tp is Path:
            if not isinstance(value, (str, Path)) or not str(value):
                self.fail(key, f"expected a path, got {value!r}")
            return self.path(value)
        if tp is Any:
            return value
        raise TypeError(f"config field {key} has unsupported type {tp!r}")  # a bug in this module

    def path(self, value: str | Path) -> Path:
        p = Path(value).expanduser()
        if not p.is_absolute() and self.base_dir is not None:
            # normpath, not resolve(): drop "configs/../" without following symlinks.
            p = Path(os.path.normpath(self.base_dir / p))
        return p

    def class_spec(self, value: Any, key: str) -> ClassSpec:
        if not isinstance(value, dict) or set(value) != {"name", "color"}:
            self.fail(key, f"each class needs exactly name and color, e.g. {{name: road, color: [128, 64, 128]}}; got {value!r}")
        name = self.convert(str, value["name"], f"{key}.name")
        color = self.convert(tuple[int, int, int], value["color"], f"{key}.color")
        if any(not 0 <= c <= 255 for c in color):
            self.fail(f"{key}.color", f"RGB components must be in 0..255, got {list(color)}")
        return ClassSpec(name, color)

    def class_file(self, value: str | Path, key: str) -> list[ClassSpec]:
        path = self.path(value)
        if not path.is_file():
            self.fail(key, f"class list file {path} does not exist; give a list of {{name, color}} or a YAML/JSON file path")
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            self.fail(key, f"cannot read class list file {path}: {exc}")
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        if not isinstance(data, list):
            self.fail(key, f"{path} must hold a list of {{name, color}} (or classes: [...])")
        return [self.class_spec(v, f"{key}[{i}] ({path.name})") for i, v in enumerate(data)]


# ----------------------------------------------------------------------------- validation


def _validate(cfg: Config, source: str) -> None:
    """Impossible values and cross-key constraints."""

    def fail(key: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {key}: {message}")

    ds, tr, be, md, tel = cfg.dataset, cfg.training, cfg.backend, cfg.model, cfg.telemetry

    names = ds.class_names
    if len(names) < 2:
        fail("dataset.classes", "need at least 2 classes")
    if len(names) >= IGNORE_INDEX:
        fail("dataset.classes", f"at most {IGNORE_INDEX - 1} classes fit in uint8 masks, got {len(names)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        fail("dataset.classes", f"class names must be unique; repeated: {', '.join(dupes)}")
    colors = [c.color for c in ds.classes]
    dup_colors = sorted({c for c in colors if colors.count(c) > 1})
    if dup_colors and ds.mask_format == "rgb":
        fail("dataset.classes", f"two classes share a colour {list(dup_colors[0])}; RGB masks need one colour per class")
    if ds.void_class is not None and ds.void_class not in names:
        close = difflib.get_close_matches(ds.void_class, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fail("dataset.void_class", f"{ds.void_class!r} is not a class name; {hint}choose one of {', '.join(names)} or null")
    for key, frac in (("dataset.split.val_fraction", ds.split.val_fraction),
                      ("dataset.split.test_fraction", ds.split.test_fraction)):
        if not 0.0 <= frac < 1.0:
            fail(key, f"must be in [0, 1), got {frac}")
    if ds.split.val_fraction + ds.split.test_fraction >= 1.0:
        fail("dataset.split", "val_fraction + test_fraction must leave some sequences for training (sum < 1)")
    if ds.split.val and ds.split.test and set(ds.split.val) & set(ds.split.test):
        fail("dataset.split", f"sequences in both val and test: {sorted(set(ds.split.val) & set(ds.split.test))}")
    if ds.cache_size is not None and min(ds.cache_size) <= 0:
        fail("dataset.cache_size", f"must be positive [H, W], got {list(ds.cache_size)}")
    if ds.cache_workers is not None and ds.cache_workers < 1:
        fail("dataset.cache_workers", f"must be >= 1 or null (all cores), got {ds.cache_workers}")

    if md.output_stride not in (8, 16, 32):
        fail("model.output_stride", f"must be 8, 16 or 32, got {md.output_stride}")

    for key, value in {"backend.dist_timeout_s": be.dist_timeout_s,
                       "backend.prepare_timeout_s": be.prepare_timeout_s}.items():
        if value <= 0:
            fail(key, f"must be positive, got {value}")

    positive_ints = {
        "training.batch_size": tr.batch_size, "training.val_batch_size": tr.val_batch_size,
        "training.epochs": tr.epochs, "training.val_interval": tr.val_interval,
        "training.visualization_interval": tr.visualization_interval,
        "training.max_checkpoints": tr.max_checkpoints, "training.grad_accum_steps": tr.grad_accum_steps,
        "training.prefetch_factor": tr.prefetch_factor, "training.log_interval": tr.log_interval,
    }
    for key, value in positive_ints.items():
        if value < 1:
            fail(key, f"must be >= 1, got {value}")
    for key, value in {"training.num_workers": tr.num_workers, "training.warmup_iters": tr.warmup_iters,
                       "training.num_visualizations": tr.num_visualizations}.items():
        if value < 0:
            fail(key, f"must be >= 0, got {value}")
    if tr.max_steps is not None and tr.max_steps < 1:
        fail("training.max_steps", f"must be >= 1 or null, got {tr.max_steps}")
    if tr.learning_rate <= 0:
        fail("training.learning_rate", f"must be positive, got {tr.learning_rate}")
    for key, value in {"training.weight_decay": tr.weight_decay, "training.min_lr": tr.min_lr,
                       "training.momentum": tr.momentum, "training.poly_power": tr.poly_power}.items():
        if value < 0:
            fail(key, f"must be >= 0, got {value}")
    if tr.min_lr > tr.learning_rate:
        fail("training.min_lr", f"must not exceed training.learning_rate ({tr.learning_rate}), got {tr.min_lr}")
    if tr.grad_clip_norm is not None and tr.grad_clip_norm <= 0:
        fail("training.grad_clip_norm", f"must be positive or null, got {tr.grad_clip_norm}")
    if min(tr.image_size) <= 0:
        fail("training.image_size", f"must be positive [H, W], got {list(tr.image_size)}")
    aug = tr.augment
    if not 0 < aug.scale_min <= aug.scale_max:
        fail("training.augment", f"need 0 < scale_min <= scale_max, got {aug.scale_min}, {aug.scale_max}")

    if tel.vram_interval_s <= 0:
        fail("telemetry.vram_interval_s", f"must be positive, got {tel.vram_interval_s}")
