"""``python -m dist_seg.synth OUT_DIR [...]``: see :mod:`dist_seg.synth.cli`."""

import sys

from .cli import main

sys.exit(main())
