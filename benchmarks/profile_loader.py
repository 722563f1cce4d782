"""Profile a training loader with py-spy, and summarise where each process and thread spent its samples.

    py-spy record -r 500 --subprocesses -f raw -o loader.prof -- \\
        python benchmarks/profile_loader.py --workers 1 --seconds 6
    python benchmarks/profile_loader.py --summarize loader.prof

The first command iterates a loader of the ``loader`` suite (quick sizes; the full
cache by default, ``--pipeline`` picks another) for a while; the second groups
py-spy's raw samples by role (a gather thread of the full cache's loader; a worker
process's main, queue-feeder and file-descriptor-sharing threads; the main process)
and prints each role's heaviest call sites.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.context import quiet  # noqa: E402
from benchmarks.data import ensure_dataset, raw_config  # noqa: E402
from benchmarks.sizes import PRESETS  # noqa: E402
from dist_seg.config import config_from_dict  # noqa: E402
from dist_seg.data.loader import SingleProcess, build_loader, describe_loader  # noqa: E402
from dist_seg.data.pipeline import load_datasets, prepare  # noqa: E402

# Function names that identify which process / thread a py-spy stack belongs to (checked in order).
ROLES = (("_WorkItem.run", "main: gather thread"), ("_worker_loop", "worker: main thread"),
         ("Queue._feed", "worker: queue feeder thread"), ("_ResourceSharer._serve", "worker: fd-sharing thread"),
         ("_pin_memory_loop", "main: pin-memory thread"))
# --pipeline: (use_cache, cache_images, cache folder of the loader suite)
PIPELINES = {"full-cache": (True, True, "cache-full"), "mask-cache": (True, False, "cache-masks"),
             "decode": (False, True, "cache-full")}


def iterate(pipeline: str, workers: int, seconds: float, scratch: Path) -> None:
    """Iterate one pipeline's training loader for ``seconds`` and print the samples/s."""
    sizes = PRESETS["quick"]
    root = ensure_dataset(scratch, sizes, print)
    use_cache, cache_images, cache_dir = PIPELINES[pipeline]
    cfg = config_from_dict(raw_config(root, scratch / "profile_run", scratch / cache_dir,
                                      image_size=sizes.loader_size, batch_size=sizes.loader_batch,
                                      num_workers=workers, target="cpu", use_cache=use_cache,
                                      cache_images=cache_images))
    prepare(cfg, log=quiet, progress=False)
    loader = build_loader(load_datasets(cfg).train, cfg.training, SingleProcess(), train=True)
    for _batch in loader:  # warm-up epoch: workers started, cache pages mapped
        pass
    samples = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        samples += sum(len(batch.paths) for batch in loader)
    print(f"{pipeline}, {workers} workers ({describe_loader(loader)}): "
          f"{samples / (time.perf_counter() - start):.0f} samples/s")


def summarize(path: Path, top: int) -> str:
    """Samples per role, and per role its heaviest call sites (innermost three frames)."""
    sites: collections.Counter = collections.Counter()
    per_role: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.split(" (")[0] for f in stack.split(";")[1:]]  # drop the "process N" root
        joined = ";".join(frames)
        role = next((name for marker, name in ROLES if marker in joined), "main process")
        per_role[role] += int(count)
        sites[(role, " > ".join(frames[-3:]))] += int(count)
    total = sum(per_role.values())
    lines = [f"{total} samples"]
    for role, count in per_role.most_common():
        lines.append(f"\n{role}: {count} samples ({100 * count / total:.0f}% of all)")
        heaviest = sorted(((n, site) for (r, site), n in sites.items() if r == role), reverse=True)[:top]
        lines += [f"  {100 * n / count:5.1f}%  {site}" for n, site in heaviest]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/profile_loader.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default="full-cache")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--scratch", type=Path, default=REPO_ROOT / "benchmarks" / "out" / "scratch")
    parser.add_argument("--summarize", type=Path, metavar="RAW_PROFILE",
                        help="summarise a py-spy raw (-f raw) profile instead of running the loader")
    parser.add_argument("--top", type=int, default=6, help="call sites shown per role")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize, args.top))
    else:
        iterate(args.pipeline, args.workers, args.seconds, args.scratch.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
