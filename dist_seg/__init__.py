"""dist_seg: distributed, throughput-optimised DeepLabV3+ training for driving-video segmentation."""

__version__ = "0.1.0"
