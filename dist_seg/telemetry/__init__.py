"""Monitoring: TensorBoard, per-rank VRAM sampling, memory log, epoch history, console progress.

Nothing here knows about the training engine; the engine builds these pieces and feeds them.
"""
