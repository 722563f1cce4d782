"""What is wrong with a dataset, one record per finding (decoding and the dataset checks both make them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: where, what, and how to fix it."""

    kind: str
    path: Path
    message: str
    fix: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}\n    fix: {self.fix}"
