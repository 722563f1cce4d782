"""Out of memory as a user error: which setting asked for too much, and what to lower.

A batch too large for the device (CUDA's ``OutOfMemoryError``) or for the host (the CPU
allocator's ``RuntimeError``, ``MemoryError``) is a config choice, not a bug: the step,
the validation pass and the pre-flight forward run inside :func:`memory_needed_by`, which
turns it into one :class:`~dist_seg.errors.ConfigError` line naming the key and the fix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from ..errors import ConfigError


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed allocation (device or host), not some other error."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())


@contextlib.contextmanager
def memory_needed_by(what: str, device: torch.device, fix: str) -> Iterator[None]:
    """Inside, running out of memory raises ConfigError: ``{what} does not fit in memory on {device}; {fix}``.

    ``what`` starts with the key at fault (``"training.batch_size 64: one training step"``).
    Other errors pass through unchanged.
    """
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"{what} does not fit in memory on {device} ({detail}); {fix}") from exc
