"""Data: palette, discovery and splits, validation, caches, dataset and loader, synthetic data."""
