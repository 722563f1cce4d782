"""Engine: distributed setup, training loop, evaluation, checkpoints, losses, schedule."""
