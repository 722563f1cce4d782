"""Monitoring: TensorBoard, per-rank VRAM sampling, GPU driver backends, memory log, epoch history,
console progress.

Nothing here knows about training; the trainer builds these pieces and feeds them.
Import the submodule you need (``dist_seg.telemetry.vram``, ``dist_seg.telemetry.gpu``, ...):
this package re-exports nothing, so importing one piece (config.py imports ``gpu`` for the
backend names) does not load torch or TensorBoard.
"""
