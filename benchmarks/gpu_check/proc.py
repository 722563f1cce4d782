"""Child processes of the GPU check: streamed to a log file, time-boxed, killed with everything they started.

A part of the check must end by its deadline even when the command it runs hangs (a stuck
NCCL rendezvous, a compile that never finishes). ``subprocess.run(timeout=...)`` kills only
the direct child, which would leave torchrun's workers holding the GPU for the next part; so
each command gets its own process group, and at the deadline that group and every process
below the command are killed.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TAIL_LINES = 40


@dataclass(frozen=True)
class CommandResult:
    """How a command ended."""

    argv: tuple[str, ...]
    returncode: int | None  # None when it was killed at its deadline
    seconds: float
    log_path: Path
    tail: str  # last TAIL_LINES lines of its output

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """One line: what ran and how it ended."""
        how = f"timed out after {self.seconds:.0f} s (killed)" if self.timed_out else f"exit {self.returncode}"
        return f"{' '.join(self.argv[:6])}{' ...' if len(self.argv) > 6 else ''}: {how}; log {self.log_path}"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment with the repository importable and unbuffered Python output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_command(argv: Sequence[str], *, log_path: Path, timeout_s: float, env: dict[str, str] | None = None,
                echo: Callable[[str], None] | None = None) -> CommandResult:
    """Run ``argv`` from the repository root, its output (stdout and stderr) appended to ``log_path``.

    ``echo`` receives every output line as it arrives (progress for the console). After
    ``timeout_s`` seconds the command's whole process group is killed and the result says so.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    start = time.monotonic()
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(list(argv), cwd=REPO_ROOT, env=env if env is not None else child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", bufsize=1, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    log.write(line)
                    log.flush()
                except ValueError:  # the log was closed: a straggler outlived the kill; drop its output
                    return
                # Progress bars redraw with carriage returns; only the last state is worth keeping.
                text = line.rstrip("\n").rsplit("\r", 1)[-1]
                tail.append(text)
                if echo is not None:
                    echo(text)

        reader = threading.Thread(target=pump, name="gpu-check-output", daemon=True)
        reader.start()
        try:
            returncode: int | None = proc.wait(timeout=max(timeout_s, 0.0))
        except subprocess.TimeoutExpired:
            returncode = None
            _kill_tree(proc)
        reader.join(timeout=5.0)
        seconds = time.monotonic() - start
        log.write(f"# {'killed at the deadline' if returncode is None else f'exit {returncode}'} "
                  f"after {seconds:.1f} s\n")
    return CommandResult(tuple(argv), returncode, seconds, log_path, "\n".join(tail))


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the command, its process group and every descendant, then reap the command.

    torchrun starts each worker in a session of its own, so killing the launcher's group
    alone would leave the workers running (and holding the GPU); they are found through
    /proc before anything is killed, while their parent links still lead to the command.
    """
    victims = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:  # unkillable (stuck in the driver): leave it, report the timeout
        pass


def _descendants(root: int) -> list[int]:
    """PIDs of every process below ``root`` (empty where /proc is not available)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            # The command name (field 2) may hold spaces and parentheses: the parent PID follows its last ')'.
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[parent].append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
