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
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, NoReturn

import yaml

from .. import atomic
from .classes import DAVID_CLASSES, IGNORE_INDEX, ClassSpec, read_class_file
from ..errors import ConfigError

REQUIRED: Any = dataclasses.MISSING

#: What ``telemetry.vram_sampler`` accepts: a GPU driver library, ``auto``, or ``none`` (no driver calls).
#: ``dist_seg.telemetry.gpu`` opens the libraries named here.
VRAM_SAMPLER_CHOICES: tuple[str, ...] = ("auto", "nvml", "amdsmi", "none")

# Upper bounds that only refuse absurd values (a typo's extra zeros): worker processes or
# threads beyond any machine's cores, and prefetching that would hold an epoch in memory.
MAX_WORKERS = 1024
MAX_PREFETCH = 64

# A section's validate() reports a problem with fail(key, message); key is relative to the
# section ("" = the section itself) and the builder prefixes it with the section's path.
Fail = Callable[[str, str], NoReturn]


# Largest seed: numpy's seeds are 32-bit, and torch seeds a generator with seed * 1000 + rank.
MAX_SEED = 2**32 - 1
# Longest wait a timeout may set (30 days): far beyond any real wait, far below what
# datetime.timedelta and the process group's millisecond clock can hold.
MAX_TIMEOUT_S = 30 * 24 * 3600.0


def _check_fraction(fail: Fail, key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        fail(key, f"must be in [0, 1), got {value}")


@dataclass
class SplitConfig:
    """How sequences are split into train / val / test. Named lists win over fractions.

    Fractions round up to whole sequences (at least one for a non-zero fraction), so on a
    small dataset ``test_fraction`` can take a large share of the training frames; name
    ``test: []`` to keep them (prepare logs a warning when this happens).
    """

    val_fraction: float = 0.15
    test_fraction: float = 0.1
    val: list[str] | None = None
    test: list[str] | None = None

    def validate(self, fail: Fail) -> None:
        _check_fraction(fail, "val_fraction", self.val_fraction)
        _check_fraction(fail, "test_fraction", self.test_fraction)
        if self.val_fraction + self.test_fraction >= 1.0:
            fail("", "val_fraction + test_fraction must leave some sequences for training (sum < 1)")
        if self.val and self.test and set(self.val) & set(self.test):
            fail("", f"sequences in both val and test: {sorted(set(self.val) & set(self.test))}")


@dataclass
class DatasetConfig:
    """Where the data is and how to read it."""

    root: Path = REQUIRED
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    images: str = "Images"
    labels: str = "Labels"
    # A list of {name, color} or a path to a YAML/JSON file holding that list (the file
    # may also name its void_class, used unless this section sets one).
    classes: list[ClassSpec] = field(default_factory=lambda: list(DAVID_CLASSES))
    # Class ignored in the loss and in mIoU, by name or id (an id is stored as its name);
    # null = every class is learned.
    void_class: str | int | None = None
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
    # Each cache setting (size, classes, mask format, ...) of a dataset has its own cache folder;
    # this many most recently used ones are kept per dataset, older ones are deleted.
    cache_keep_settings: int = 3

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

    @property
    def uses_default_classes(self) -> bool:
        """True when the class list is DAVID's (the default)."""
        return tuple(self.classes) == DAVID_CLASSES

    def validate(self, fail: Fail) -> None:
        for key in ("images", "labels"):
            folder = Path(getattr(self, key))
            if folder.is_absolute() or ".." in folder.parts:
                fail(key, f"must be a folder inside dataset.root (a relative path without '..'), got "
                          f"{getattr(self, key)!r}; set dataset.root to the folder that holds both the images "
                          "and the labels folders")
        if self.test_root is not None and Path(self.test_root).resolve() == Path(self.root).resolve():
            fail("test_root", f"is the same folder as dataset.root ({self.root}): the test split would be the "
                              "training data; point it at a separate test set, or remove it to draw the test "
                              "split from dataset.root (dataset.split.test_fraction)")
        names = self.class_names
        if len(names) < 2:
            fail("classes", "need at least 2 classes")
        if len(names) >= IGNORE_INDEX:
            fail("classes", f"at most {IGNORE_INDEX - 1} classes fit in uint8 masks, got {len(names)}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            fail("classes", f"class names must be unique; repeated: {', '.join(dupes)}")
        colors = [c.color for c in self.classes]
        dup_colors = sorted({c for c in colors if colors.count(c) > 1})
        if dup_colors and self.mask_format == "rgb":
            fail("classes", f"two classes share a colour {list(dup_colors[0])}; RGB masks need one colour per class")
        if isinstance(self.void_class, int):
            if not 0 <= self.void_class < len(names):
                fail("void_class", f"class id {self.void_class} is out of range: the {len(names)} classes have "
                                   f"ids 0..{len(names) - 1}; give an id in that range, a class name, or null")
            self.void_class = names[self.void_class]
        elif self.void_class is not None and self.void_class not in names:
            close = difflib.get_close_matches(self.void_class, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            fail("void_class", f"{self.void_class!r} is not a class name; {hint}choose one of "
                               f"{', '.join(names)} (or its id), or null")
        if self.cache_size is not None and min(self.cache_size) <= 0:
            fail("cache_size", f"must be positive [H, W], got {list(self.cache_size)}")
        if self.cache_workers is not None and not 1 <= self.cache_workers <= MAX_WORKERS:
            fail("cache_workers", f"must be in 1..{MAX_WORKERS} or null (all cores), got {self.cache_workers}")
        if self.cache_keep_settings < 1:
            fail("cache_keep_settings", f"must be >= 1, got {self.cache_keep_settings}")


@dataclass
class ModelConfig:
    """Which network to build. Custom models (``type: pkg.module:Class``) get ``extra`` as kwargs."""

    type: str = "deeplabv3plus"
    # null = the model type's default backbone (dist_seg.models resolves it).
    backbone: str | None = None
    activation: str = "relu"
    output_stride: int = 16
    separable: bool = False
    # Local file with backbone (or full-model) weights; never downloaded.
    backbone_weights: Path | None = None
    # A dist_seg checkpoint or plain state dict: every weight matching by name and shape is
    # loaded when the run starts fresh (not when resuming); heads whose shape differs keep
    # their fresh init (fine-tuning across class sets).
    init_from: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_custom(self) -> bool:
        return ":" in self.type

    @staticmethod
    def takes_extra_keys(raw: dict) -> bool:
        """Whether a raw model section keeps its unknown keys (in ``extra``) instead of rejecting them."""
        return ":" in str(raw.get("type", ""))

    def validate(self, fail: Fail) -> None:
        if self.output_stride not in (8, 16, 32):
            fail("output_stride", f"must be 8, 16 or 32, got {self.output_stride}")


@dataclass
class BackendConfig:
    """Device, precision, compilation and process-group settings."""

    target: Literal["auto", "cuda", "rocm", "cpu"] = "auto"
    amp: bool = True
    # auto: bfloat16 where the device computes it natively (Ampere+ GPUs, CPUs with avx512_bf16 /
    # amx_bf16), float16 + GradScaler on older GPUs, float32 on other CPUs (runtime/amp_policy.py).
    amp_dtype: Literal["auto", "float16", "bfloat16"] = "auto"
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
    # torch's intra-op threads: "auto" = on CPU runs, the usable cores (affinity) per rank
    # minus the loader's decoding worker processes (a full cache's gather threads only copy),
    # at least 1 (OMP_NUM_THREADS wins if set); N = exactly N.
    cpu_threads: int | Literal["auto"] = "auto"

    def validate(self, fail: Fail) -> None:
        for key in ("dist_timeout_s", "prepare_timeout_s"):
            if not 0 < getattr(self, key) <= MAX_TIMEOUT_S:
                fail(key, f"must be positive and at most {MAX_TIMEOUT_S:.0f} (30 days), got {getattr(self, key)}")
        if self.cpu_threads != "auto" and self.cpu_threads < 1:
            fail("cpu_threads", f"must be auto or >= 1, got {self.cpu_threads}")


@dataclass
class PhotometricConfig:
    """Per-sample colour jitter of training images on the device (masks are untouched).

    Each sample draws a factor in ``[1 - r, 1 + r]`` for brightness, contrast, saturation and
    the gamma exponent, and a hue shift in ``[-hue, hue]`` turns; 0 switches a property off.
    """

    enabled: bool = False
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.02
    gamma: float = 0.2

    def validate(self, fail: Fail) -> None:
        for key in ("brightness", "contrast", "saturation", "gamma"):
            _check_fraction(fail, key, getattr(self, key))
        if not 0.0 <= self.hue <= 0.5:
            fail("hue", f"must be in [0, 0.5] turns of the colour wheel, got {self.hue}")


@dataclass
class AugmentConfig:
    """Batch augmentation applied on the device: geometric to images and masks alike, photometric to images."""

    hflip: bool = True
    # Random rescale range of the crop. 0.75-1.5 beat 0.5-2.0 clearly in the time-to-accuracy
    # ablation (benchmarks/RESULTS.md); configs/david.yaml keeps 0.5-2.0 for 80-epoch runs.
    scale_min: float = 0.75
    scale_max: float = 1.5
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)

    def validate(self, fail: Fail) -> None:
        if not 0 < self.scale_min <= self.scale_max:
            fail("", f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")


@dataclass
class EmaConfig:
    """Exponential moving average of the weights, used for validation, best model and checkpoints' ``model``."""

    enabled: bool = False
    # Per optimizer step; 0.999 averages roughly the last 1,000 steps.
    decay: float = 0.999
    # Decay of update n is min(decay, (1 + n) / (10 + n)), so the random init fades fast.
    warmup: bool = True

    def validate(self, fail: Fail) -> None:
        if not 0.0 < self.decay < 1.0:
            fail("decay", f"must be in (0, 1), got {self.decay}")


@dataclass
class LossConfig:
    """The training loss (validation loss stays the plain class-weighted cross-entropy)."""

    # ce: class-weighted cross-entropy; ohem: the same over the hard pixels only.
    type: Literal["ce", "ohem"] = "ce"
    # A pixel is hard when the probability of its true class is below this.
    ohem_thresh: float = 0.7
    # At least this many pixels per batch (per rank) are kept: the lowest-probability ones.
    ohem_min_kept: int = 100_000
    dice_weight: float = 0.0
    lovasz_weight: float = 0.0

    def validate(self, fail: Fail) -> None:
        if not 0.0 < self.ohem_thresh <= 1.0:
            fail("ohem_thresh", f"must be in (0, 1], got {self.ohem_thresh}")
        for key in ("ohem_min_kept", "dice_weight", "lovasz_weight"):
            if getattr(self, key) < 0:
                fail(key, f"must be >= 0, got {getattr(self, key)}")


@dataclass
class TrainingConfig:
    """Optimisation, schedule, data loading, checkpointing."""

    output_dir: Path = REQUIRED
    batch_size: int = 4
    val_batch_size: int = 4
    epochs: int = 80
    # AdamW 1e-3 with 50 warm-up steps, poly: chosen by the time-to-accuracy ablation
    # (benchmarks/RESULTS.md); 1e-4 (the original pipeline's) left a short run far behind.
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9
    lr_schedule: Literal["poly", "cosine", "constant"] = "poly"
    poly_power: float = 0.9
    warmup_iters: int = 50
    min_lr: float = 0.0
    grad_clip_norm: float | None = None
    grad_accum_steps: int = 1
    class_weighting: Literal["none", "inverse", "inverse_sqrt", "median_frequency"] = "inverse_sqrt"
    # Loader parallelism. A cache holding images is served by this many gather THREADS in
    # the training process (0 = the training thread gathers); anything that decodes files
    # (use_cache: false, cache_images: false) by this many worker PROCESSES (0 = in process).
    num_workers: int = 4
    prefetch_factor: int = 2
    # Keep worker processes alive between epochs. Gather threads always live for the whole
    # run (they idle between epochs), so this setting only concerns worker processes.
    persistent_workers: bool = True
    # [H, W] fed to the network.
    image_size: tuple[int, int] = (512, 512)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # Before each validation, re-estimate BatchNorm statistics on this many un-augmented
    # training batches at the weights being validated ("precise BN"); 0 = off. On by default:
    # after a short run from scratch the running statistics (momentum 0.01 in torchvision's
    # MobileNetV3) still describe the first steps and eval-mode predictions are near constant.
    precise_bn_batches: int = 50
    # While precise BN is off: before each validation, warn when eval-mode predictions disagree
    # badly (< 80 % of pixels) with batch-statistics ones on a training batch.
    bn_check: bool = True
    val_interval: int = 1
    visualization_interval: int = 5
    num_visualizations: int = 4
    max_checkpoints: int = 5
    seed: int = 1337
    deterministic: bool = False
    force_resplit: bool = False
    # A checkpoint path, "auto" (latest in output_dir/checkpoints, if any) or null.
    resume_from_checkpoint: Literal["auto"] | Path | None = None
    # Resume even when the checkpoint was trained with other classes, another model or optimizer,
    # or on a sequence that is now validation/test data (refused otherwise, with the reason).
    resume_force: bool = False
    # Stop after this many optimizer steps in total (smoke runs, benchmarks); null = all epochs.
    # The LR schedule still spans training.epochs, so a stopped run can be resumed exactly.
    max_steps: int | None = None
    log_interval: int = 20
    # After the last epoch, score the best checkpoint on the test split (native resolution,
    # no TTA) into output_dir/eval/test/; skipped when the run has no test split.
    final_eval: bool = True

    def validate(self, fail: Fail) -> None:
        for key in ("batch_size", "val_batch_size", "epochs", "val_interval", "visualization_interval",
                    "max_checkpoints", "grad_accum_steps", "prefetch_factor", "log_interval"):
            if getattr(self, key) < 1:
                fail(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("num_workers", "warmup_iters", "num_visualizations", "precise_bn_batches"):
            if getattr(self, key) < 0:
                fail(key, f"must be >= 0, got {getattr(self, key)}")
        if self.num_workers > MAX_WORKERS:
            fail("num_workers", f"must be at most {MAX_WORKERS} (loader threads or processes per rank), got "
                                f"{self.num_workers}; a few per core is plenty")
        if self.prefetch_factor > MAX_PREFETCH:
            fail("prefetch_factor", f"must be at most {MAX_PREFETCH} (batches each loader worker gathers ahead), "
                                    f"got {self.prefetch_factor}; more only holds the epoch in memory")
        if self.max_steps is not None and self.max_steps < 1:
            fail("max_steps", f"must be >= 1 or null, got {self.max_steps}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            fail("learning_rate", f"must be positive, got {self.learning_rate}")
        for key in ("weight_decay", "min_lr", "momentum", "poly_power"):
            if getattr(self, key) < 0:
                fail(key, f"must be >= 0, got {getattr(self, key)}")
        if self.min_lr > self.learning_rate:
            fail("min_lr", f"must not exceed training.learning_rate ({self.learning_rate}), got {self.min_lr}")
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            fail("grad_clip_norm", f"must be positive or null, got {self.grad_clip_norm}")
        if min(self.image_size) <= 0:
            fail("image_size", f"must be positive [H, W], got {list(self.image_size)}")
        if not 0 <= self.seed <= MAX_SEED:
            fail("seed", f"must be in 0..{MAX_SEED}, got {self.seed}")


@dataclass
class TelemetryConfig:
    """Monitoring: TensorBoard, VRAM sampling, console progress."""

    tensorboard: bool = True
    vram_sampler: Literal[VRAM_SAMPLER_CHOICES] = "auto"  # type: ignore[valid-type]
    vram_interval_s: float = 1.0
    progress: Literal["auto", "bar", "log", "none"] = "auto"

    def validate(self, fail: Fail) -> None:
        # An hour between samples already records nothing useful; far larger waits overflow the thread's timer.
        if not 0 < self.vram_interval_s <= 3600:
            fail("vram_interval_s", f"must be positive and at most 3600, got {self.vram_interval_s}")


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

    Relative paths in the file resolve from the folder of the file as named (a symlinked
    config's own folder is not looked up: ``abspath``, not ``resolve``); relative paths given
    as overrides resolve from the current directory, like every other path on a command line.
    """
    path = expand_user(path, "the config file path")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass the path to a YAML file such as configs/demo.yaml")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded): save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with dataset:, training:, ... sections, not {type(raw).__name__}")
    parsed = parse_overrides(overrides)
    apply_overrides(raw, parsed)
    return config_from_dict(raw, base_dir=Path(os.path.abspath(path)).parent, source=str(path),
                            command_line_keys=[key for key, _ in parsed])


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one silently).

    Keys merged in with ``<<: *anchor`` are not duplicates: a key written next to the merge
    overrides the merged one, as YAML defines.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, typing.Hashable):
                raise ConfigError(f"{key_node.start_mark.name}, line {line}: the key {key!r} is a "
                                  f"{type(key).__name__}; config keys are plain names such as batch_size")
            if key in seen:
                raise ConfigError(f"{key_node.start_mark.name}: key {key!r} appears twice in the same section "
                                  f"(lines {seen[key]} and {line}); YAML would silently keep only the last one: "
                                  "merge them into one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def expand_user(value: str | os.PathLike, key: str) -> Path:
    """``Path(value).expanduser()``; an unknown ``~user`` is a ConfigError naming ``key``, not a RuntimeError."""
    try:
        return Path(value).expanduser()
    except RuntimeError as exc:
        raise ConfigError(f"{key}: cannot expand {str(value)!r} ({exc}); that user does not exist here: write "
                          "the path out in full") from exc


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


def config_from_dict(raw: dict, base_dir: Path | None = None, source: str = "config",
                     command_line_keys: typing.Sequence[str] = ()) -> Config:
    """Build and validate a :class:`Config` from plain data (a parsed YAML file or a checkpoint).

    Relative paths resolve from ``base_dir`` (None: left relative), except those under
    ``command_line_keys`` (``--set`` overrides), which resolve from the current directory.
    """
    return _Builder(base_dir=base_dir, source=source, command_line_keys=command_line_keys).build(Config, raw, "")


def config_to_dict(cfg: Config) -> dict:
    """Plain, YAML/JSON-safe data (paths as strings, tuples as lists) that round-trips."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            out = {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != _EXTRA}
            if hasattr(value, "takes_extra_keys"):
                out.update(convert(getattr(value, _EXTRA)))
            return out
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

# The field of a section with ``takes_extra_keys`` that collects its unknown keys.
_EXTRA = "extra"


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

    def __init__(self, base_dir: Path | None, source: str, command_line_keys: typing.Sequence[str] = ()) -> None:
        self.base_dir = base_dir
        self.source = source
        self.command_line_keys = tuple(command_line_keys)
        # Defaults that a referenced file supplies for a sibling key (a class list file's
        # void_class): dotted key -> (value, file name). Used only where the key is absent.
        self.file_defaults: dict[str, tuple[Any, str]] = {}

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.source}: {key}: {message}")

    def build(self, cls: type, raw: Any, prefix: str) -> Any:
        """An instance of the section ``cls`` from ``raw``, checked key by key, then validated."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.fail(prefix or "top level", f"expected a mapping of keys, got {raw!r}")
        hints = typing.get_type_hints(cls)
        takes_extra = hasattr(cls, "takes_extra_keys")
        fields = {f.name: f for f in dataclasses.fields(cls) if not (takes_extra and f.name == _EXTRA)}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        keep_unknown = takes_extra and cls.takes_extra_keys(raw)
        for key, value in raw.items():
            dotted = _join(prefix, str(key))
            if key not in fields:
                if keep_unknown:
                    extra[key] = value
                    continue
                close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
                hint = f"did you mean {_join(prefix, close[0])}?" if close else (
                    f"valid keys here: {', '.join(fields)}")
                self.fail(dotted, f"unknown key; {hint}")
            kwargs[key] = self.convert(hints[key], value, dotted)
        for name, f in fields.items():
            dotted = _join(prefix, name)
            if name in kwargs:
                continue
            if dotted in self.file_defaults:
                value, origin = self.file_defaults[dotted]
                kwargs[name] = self.convert(hints[name], value, f"{dotted} (from {origin})")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(dotted, f"required key is missing; {self.missing_fix(hints[name], dotted)}")
        if takes_extra:
            kwargs[_EXTRA] = extra
        section = cls(**kwargs)
        if hasattr(section, "validate"):
            section.validate(lambda key, message: self.fail(_join(prefix, key), message))
        return section

    def missing_fix(self, tp: Any, dotted: str) -> str:
        """How to supply a missing key; for a missing section, the keys it cannot do without."""
        if not dataclasses.is_dataclass(tp):
            return f"add it to the config file or pass --set {dotted}={_placeholder(tp)}"
        hints = typing.get_type_hints(tp)
        required = [f.name for f in dataclasses.fields(tp)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if not required:
            return f"add a {dotted}: section to the config file"
        keys = ", ".join(f"{dotted}.{n}" for n in required)
        first = required[0]
        return (f"add a {dotted}: section with {keys} to the config file, or pass "
                f"--set {dotted}.{first}={_placeholder(hints[first])}")

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
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept what float() accepts.
            if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                try:
                    value = float(value)
                except ValueError:
                    pass
            # NaN compares false with every bound, so it would slip through each check after this;
            # infinity passes "> 0" and then poisons every step.
            if isinstance(value, float) and math.isfinite(value):
                return value
            self.fail(key, f"expected a number (finite, not nan or inf), got {value!r}")
        if tp is str:
            if isinstance(value, str):
                return value
            self.fail(key, f"expected a string, got {value!r}")
        if tp is Path:
            if not isinstance(value, (str, Path)) or not str(value):
                self.fail(key, f"expected a path, got {value!r}")
            return self.path(value, key)
        if tp is Any:
            return value
        raise TypeError(f"config field {key} has unsupported type {tp!r}")  # a bug in this module

    def path(self, value: str | Path, key: str) -> Path:
        p = expand_user(value, f"{self.source}: {key}")
        if p.is_absolute():
            return p
        if any(key == k or key.startswith(k + ".") for k in self.command_line_keys):
            return Path(os.path.abspath(p))  # typed in a shell: relative to where it was typed
        if self.base_dir is not None:
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
        path = self.path(value, key)
        if not path.is_file():
            self.fail(key, f"class list file {path} does not exist; give a list of {{name, color}} or a YAML/JSON file path")
        try:
            content = read_class_file(path)
        except ValueError as exc:
            self.fail(key, str(exc))
        if content.has_void:
            self.file_defaults[key.rpartition(".")[0] + ".void_class"] = (content.void_class, path.name)
        return [self.class_spec(v, f"{key}[{i}] ({path.name})") for i, v in enumerate(content.entries)]


def _join(prefix: str, key: str) -> str:
    return ".".join(part for part in (prefix, key) if part)


def _placeholder(tp: Any) -> str:
    return "PATH" if tp is Path else "..."
