"""Stand-ins for GPU driver libraries and torch.cuda, for tests on machines without a GPU."""
