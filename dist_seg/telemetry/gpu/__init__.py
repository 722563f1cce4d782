"""GPU driver libraries behind one interface, and the one place that chooses among them.

``base`` holds the interface and the records; ``nvml`` (NVIDIA, ``pynvml``) and ``amdsmi``
(AMD, ``amdsmi``) implement it and import only ``base``; this module imports both and
owns the backend names and the ``auto`` policy used by the VRAM sampler and by
``gpu_proc_sampler`` alike. Nothing in this package imports torch.
"""

from __future__ import annotations

from collections.abc import Callable

from ...config.schema import VRAM_SAMPLER_CHOICES
from .amdsmi import AmdSmiBackend
from .base import BackendName, BackendUnavailable, GpuBackend
from .nvml import NvmlBackend

_OPENERS: dict[str, Callable[[Callable[[str], None]], GpuBackend]] = {
    "nvml": NvmlBackend.open,
    "amdsmi": AmdSmiBackend.open,
}

#: Every driver library, in the order ``auto`` tries them when the vendor is unknown.
BACKEND_NAMES: tuple[BackendName, ...] = tuple(_OPENERS)  # type: ignore[assignment]

if VRAM_SAMPLER_CHOICES != ("auto", *BACKEND_NAMES, "none"):  # the config's list names exactly these libraries
    raise ImportError(f"config.VRAM_SAMPLER_CHOICES {VRAM_SAMPLER_CHOICES} does not match the GPU backends {BACKEND_NAMES}")


def open_backend(name: BackendName, log: Callable[[str], None]) -> GpuBackend:
    """Import and initialise one driver library; raises :class:`BackendUnavailable` saying why."""
    try:
        opener = _OPENERS[name]
    except KeyError:
        raise ValueError(f"unknown GPU backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}") from None
    return opener(log)


def candidates(requested: str, vendor: BackendName | None = None) -> tuple[BackendName, ...]:
    """The libraries to try, in order, for ``requested`` (a name from :data:`VRAM_SAMPLER_CHOICES`).

    ``auto`` means the library of ``vendor`` when the caller knows which vendor's device it
    watches (the other vendor's library cannot see that device), else every library in
    :data:`BACKEND_NAMES` order; ``none`` means no library at all.
    """
    if requested not in VRAM_SAMPLER_CHOICES:
        raise ValueError(f"GPU backend must be one of {', '.join(VRAM_SAMPLER_CHOICES)}, got {requested!r}")
    if requested == "none":
        return ()
    if requested == "auto":
        return (vendor,) if vendor is not None else BACKEND_NAMES
    return (requested,)  # type: ignore[return-value]


def open_first(names: tuple[BackendName, ...], log: Callable[[str], None]) -> GpuBackend:
    """The first of ``names`` that opens; else :class:`BackendUnavailable` with every reason."""
    reasons = []
    for name in names:
        try:
            return open_backend(name, log)
        except BackendUnavailable as exc:
            reasons.append((name, exc))
    if len(reasons) == 1:
        name, exc = reasons[0]
        raise BackendUnavailable(f"{name} unavailable: {exc}")
    raise BackendUnavailable("no GPU library is usable:\n  " + "\n  ".join(f"{n}: {e}" for n, e in reasons))


__all__ = [
    "BACKEND_NAMES",
    "VRAM_SAMPLER_CHOICES",
    "BackendName",
    "BackendUnavailable",
    "GpuBackend",
    "candidates",
    "open_backend",
    "open_first",
]
