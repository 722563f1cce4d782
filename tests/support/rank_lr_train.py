"""``python -m dist_seg.train CONFIG`` with a learning rate that depends on RANK: ranks started with different configs.

A mistake a launcher script makes (a per-rank --set), run for real under torchrun.
"""

import os
import sys

from dist_seg.train.cli import main

if __name__ == "__main__":
    rank = int(os.environ.get("RANK", "0"))
    sys.exit(main([sys.argv[1], "--set", f"training.learning_rate={0.001 * (rank + 1)}"]))
