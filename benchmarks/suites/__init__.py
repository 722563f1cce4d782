"""The benchmark suites. Each module has ``NAME``, ``TITLE`` and ``run(ctx) -> list[Record]``."""

from . import ddp, e2e, loader, memory, step, time_to_accuracy, vram

SUITES = {module.NAME: module for module in (loader, step, e2e, ddp, vram, memory, time_to_accuracy)}
# What runs without --suite: the throughput suites. time_to_accuracy trains for an hour on a
# CPU, so it runs only when named.
DEFAULT_SUITES = tuple(name for name in SUITES if name != time_to_accuracy.NAME)
