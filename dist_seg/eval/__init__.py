"""Evaluation and inference: the one inference path, metrics, native-resolution and video evaluation, reports, pictures.

Never imports :mod:`dist_seg.train`: predict, evaluate, export and the trainer's validation all build on this package.
"""
