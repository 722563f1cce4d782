"""May two ranks share one device? ``torchrun --nproc_per_node=2 -m benchmarks.gpu_check.share_probe BACKEND TARGET``.

Every rank puts itself on device 0 (``TARGET`` cuda) or the CPU, joins a ``BACKEND`` process
group and all-reduces its rank + 1. A rank that gets there prints ``share_probe: rank R ...``
with the sum; NCCL 2.5 and later refuse two ranks on one GPU at communicator set-up
("Duplicate GPU detected", ncclInvalidUsage), which ends the rank with that error instead.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def main(argv: list[str]) -> int:
    backend, target = argv
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", 0) if target == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # device_id makes NCCL set up its communicator now, not at the first collective.
    dist.init_process_group(backend, timeout=timedelta(seconds=45),
                            device_id=device if device.type == "cuda" else None)
    try:
        value = torch.full((1,), float(rank + 1), device=device)
        dist.all_reduce(value)
        expected = world * (world + 1) / 2
        # One write per line: the ranks share the launcher's stdout, and print() may write the text and
        # its newline separately, which interleaves two ranks' lines into one.
        os.write(sys.stdout.fileno(), f"share_probe: rank {rank} of {world} on {device}: all_reduce gave "
                                      f"{value.item():g} (expected {expected:g})\n".encode())
        return 0 if value.item() == expected else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
