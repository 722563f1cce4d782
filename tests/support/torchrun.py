"""Run ``python -m dist_seg.train`` under a real torchrun on loopback (gloo), for the multi-rank tests."""

from __future__ import annotations

import os
import random
import socket
import subprocess
from pathlib import Path

from support.helpers import PYTHON, REPO_ROOT, subprocess_env

# Generous bound on one launch on a loaded 2-core machine; only reached when something hangs.
LAUNCH_TIMEOUT_S = 240


def free_port() -> int:
    """A loopback port free now, for a rendezvous a launcher binds a few seconds later.

    Taken from below the kernel's ephemeral range: the suite runs two test processes at once,
    and a port the kernel handed out (``bind(("", 0))``, an outgoing connection) could be
    given to the other one's processes before our launcher binds it. Ports below the range
    are only ever taken by name.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    chooser = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little"))
    for _ in range(200):
        port = chooser.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port below {low}")


def launch_env(**extra: str) -> dict[str, str]:
    """Child environment: repo and tests importable, one thread, loopback only."""
    env = subprocess_env()
    env["PATH"] = os.pathsep.join([str(Path(PYTHON).parent), env.get("PATH", "")])
    env["GLOO_SOCKET_IFNAME"] = "lo"
    env["PET_LOCAL_ADDR"] = "127.0.0.1"
    env.update(extra)
    return env


def torchrun_train(config: Path, nproc: int, log_dir: Path, *sets: str, env: dict[str, str] | None = None) -> str:
    """Train ``config`` on ``nproc`` local ranks (``--set`` items in ``sets``); returns rank 0's stdout + stderr.

    Fails with the launcher's output when it exits non-zero or hangs.
    """
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--log-dir={log_dir}", "--redirects=3", "-m", "dist_seg.train", str(config),
           *(arg for item in sets for arg in ("--set", item))]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env or launch_env(), capture_output=True, text=True, check=False,
                          timeout=LAUNCH_TIMEOUT_S)
    rank0 = "".join(p.read_text(errors="replace") for p in sorted(log_dir.glob("*/attempt_0/0/std*.log")))
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{rank0[-4000:]}"
    return rank0
