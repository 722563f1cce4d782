"""Class palette: RGB label colours <-> class ids, vectorised.

RGB -> id goes through a 2**24-entry lookup table indexed by the packed colour, so a
whole mask converts with one fancy-indexing operation and no per-colour Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..config import DatasetConfig
from ..config.classes import IGNORE_INDEX, ClassSpec

# Value the lookup table gives colours that are not in the palette. It equals the
# ignore label, so "map unknown colours to void" needs no second pass.
UNKNOWN = IGNORE_INDEX


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Pack an ``[..., 3]`` uint8 array into ``[...]`` uint32 colour codes (R<<16 | G<<8 | B)."""
    rgb = np.asarray(rgb)
    return (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2].astype(np.uint32)


@dataclass(frozen=True)
class Palette:
    """The class list of a dataset with its colours."""

    classes: tuple[ClassSpec, ...]

    @classmethod
    def from_config(cls, ds: DatasetConfig) -> Palette:
        return cls(tuple(ds.classes))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def colors(self) -> np.ndarray:
        """``[num_classes, 3]`` uint8 colour table."""
        return np.array([c.color for c in self.classes], dtype=np.uint8).reshape(-1, 3)

    @cached_property
    def _lut(self) -> np.ndarray:
        lut = np.full(1 << 24, UNKNOWN, dtype=np.uint8)
        lut[pack_rgb(self.colors)] = np.arange(self.num_classes, dtype=np.uint8)
        return lut

    def rgb_to_ids(self, rgb: np.ndarray) -> np.ndarray:
        """``[H, W, 3]`` uint8 colour mask -> ``[H, W]`` uint8 ids; unknown colours become ``UNKNOWN``."""
        return self._lut[pack_rgb(rgb)]

    def ids_to_rgb(self, ids: np.ndarray) -> np.ndarray:
        """``[H, W]`` ids -> ``[H, W, 3]`` uint8 colours; ids outside the palette (ignore) are black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = self.colors
        return table[np.asarray(ids, dtype=np.uint8)]

    def unknown_colors(self, rgb: np.ndarray) -> dict[tuple[int, int, int], int]:
        """Colours in ``rgb`` that are not in the palette, with their pixel counts."""
        codes = pack_rgb(rgb).ravel()
        bad = codes[self._lut[codes] == UNKNOWN]
        if bad.size == 0:
            return {}
        values, counts = np.unique(bad, return_counts=True)
        return {(int(v >> 16) & 255, int(v >> 8) & 255, int(v) & 255): int(n) for v, n in zip(values, counts, strict=False)}
