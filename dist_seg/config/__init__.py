"""Configuration: the typed schema (:mod:`.schema`), class lists (:mod:`.classes`), loading (:mod:`.loading`).

Imports nothing from the rest of dist_seg but :mod:`dist_seg.errors` and :mod:`dist_seg.atomic`:
every other package depends on this one, never the other way round.
"""

from .classes import DAVID_CLASSES, IGNORE_INDEX, ClassSpec, read_class_file
from .loading import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    expand_user,
    load_config,
    parse_overrides,
    save_config,
)
from .schema import (
    MAX_SEED,
    MAX_TIMEOUT_S,
    MAX_WORKERS,
    REQUIRED,
    VRAM_SAMPLER_CHOICES,
    AugmentConfig,
    BackendConfig,
    Config,
    DatasetConfig,
    EmaConfig,
    LossConfig,
    ModelConfig,
    PhotometricConfig,
    SplitConfig,
    TelemetryConfig,
    TrainingConfig,
)

__all__ = [
    "DAVID_CLASSES", "IGNORE_INDEX", "ClassSpec", "read_class_file", "apply_overrides", "config_from_dict",
    "config_to_dict", "expand_user", "load_config", "parse_overrides", "save_config", "MAX_SEED", "MAX_TIMEOUT_S",
    "MAX_WORKERS", "REQUIRED", "VRAM_SAMPLER_CHOICES", "AugmentConfig", "BackendConfig", "Config", "DatasetConfig",
    "EmaConfig", "LossConfig", "ModelConfig", "PhotometricConfig", "SplitConfig", "TelemetryConfig", "TrainingConfig",
]
