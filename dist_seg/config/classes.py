"""Class lists: what a class is, DAVID's default list, and class list files.

A leaf module (no imports from the rest of dist_seg), so the config can take its default
class list from the data layer without an import cycle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


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


@dataclass(frozen=True)
class ClassFile:
    """The content of a class list file: its entries (unchecked) and, if it names one, its void class."""

    entries: list[Any]
    void_class: Any = None
    has_void: bool = False


def read_class_file(path: Path) -> ClassFile:
    """Parse a YAML/JSON class list file: a list of ``{name, color}``, or a mapping
    ``{classes: [...], void_class: ...}``. Raises ValueError (with the reason) when unusable.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read class list file {path}: {exc}") from exc
    void, has_void = None, False
    if isinstance(data, dict) and "classes" in data:
        unknown = sorted(str(k) for k in set(data) - {"classes", "void_class"})
        if unknown:
            raise ValueError(f"{path} has unknown keys {', '.join(unknown)}; a class list file holds "
                             "classes: [...] and optionally void_class: NAME")
        void, has_void = data.get("void_class"), "void_class" in data
        data = data["classes"]
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a list of {{name, color}} (or classes: [...])")
    return ClassFile(data, void, has_void)
