"""Throughput profiling for dist_seg: ``python benchmarks/run.py [--quick] [--suite NAME ...]``.

Every suite reports side-by-side ratios measured in one run (cache vs decode, compiled vs
eager, two ranks vs one) next to the absolute numbers they come from.
"""
