"""The benchmark suites. Each module has ``NAME``, ``TITLE`` and ``run(ctx) -> list[Record]``."""

from . import ddp, e2e, loader, memory, step, vram

SUITES = {module.NAME: module for module in (loader, step, e2e, ddp, vram, memory)}
