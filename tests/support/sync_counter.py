"""Count, on CPU, the aten ops that would make the host wait for a CUDA device.

A GPU proves a step sync-free with ``torch.cuda.set_sync_debug_mode("error")``; this machine
has none, so :class:`SyncCounter` (a ``TorchDispatchMode``) sees every aten op the calling
thread dispatches and counts those that, on CUDA, read a device value on the host:

- ``_local_scalar_dense``: behind ``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``,
  ``is_nonzero`` and ``if t:``;
- ops whose output size depends on the data: ``nonzero``, ``masked_select``, boolean-mask
  indexing (``index`` / ``index_put_`` with a bool index), ``unique`` and its variants,
  ``repeat_interleave`` without ``output_size``;
- ``bincount``: the CUDA kernel reads ``max()`` to size its output whatever ``minlength`` is;
- ``equal``: returns a host bool.

Limitation: a device -> host copy (``.cpu()``, ``.tolist()``, ``.numpy()``) is a sync on CUDA
but invisible here, because on a CPU tensor it dispatches nothing (``tolist`` never reaches
the dispatcher). Such reads are allowed only at log windows and after a validation; code
review and the GPU check's ``set_sync_debug_mode("error")`` cover them.

The mode is thread-local: loader threads are not counted, the training thread (and the
autograd engine working for it on CPU) is.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ALWAYS = frozenset({
    "_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim",
    "unique_consecutive", "bincount", "equal",
})
_BOOL_INDEXED = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices or ())


def sync_op(func: Any, args: tuple, kwargs: dict) -> str | None:
    """The name under which ``func(*args, **kwargs)`` is counted, or None when it needs no host read."""
    name = func.overloadpacket.__name__
    if name in _ALWAYS:
        return name
    if name in _BOOL_INDEXED and _has_bool_index(args):
        return f"{name}[bool]"
    if name == "repeat_interleave" and isinstance(args[0] if args else None, torch.Tensor) \
            and kwargs.get("output_size") is None and (len(args) < 2 or isinstance(args[1], torch.Tensor)):
        return name
    return None


class SyncCounter(TorchDispatchMode):
    """``with SyncCounter() as counter: ...`` then ``counter.total`` / ``counter.counts`` (op name -> count)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105 - the TorchDispatchMode hook
        kwargs = kwargs or {}
        name = sync_op(func, args, kwargs)
        if name is not None:
            self.counts[name] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        self.counts.clear()
