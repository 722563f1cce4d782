"""``python -m dist_seg.train CONFIG [--set KEY=VALUE ...]`` (also under torchrun)."""

import sys

from .cli import main

sys.exit(main())
