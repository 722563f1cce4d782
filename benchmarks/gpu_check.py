"""``python benchmarks/gpu_check.py [...]``: the same as ``python -m benchmarks.gpu_check [...]``.

The check is the package ``benchmarks/gpu_check/`` (imports resolve to the package, never to
this file); this script only lets it be started by path, like ``benchmarks/run.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gpu_check.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
