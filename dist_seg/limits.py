"""Process limits the caches run into: open files (one descriptor per memory-mapped array) and address space.

Each cached array stays memory-mapped while a run reads it, and every mapping keeps a file
descriptor open; a dataset of hundreds of sequences passes the common soft limit of 1024
open files. The soft limit is raised towards the hard one (which any process may do) when
needed, and a need beyond the hard limit, or a mapping refused for lack of address space
(``ulimit -v``), is a clear error naming the limit instead of a raw ``OSError``.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable

from .errors import DataError

# Descriptors besides the mapped arrays: the interpreter, torch, loader pipes, logs, sockets.
FD_HEADROOM = 256


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc (macOS): a guess that errs on the safe side
        return FD_HEADROOM


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def ensure_open_files(count: int, what: str, log: Callable[[str], None] = print) -> None:
    """Make room for ``count`` more open files: raise the soft ``RLIMIT_NOFILE`` towards the hard limit (logged);
    DataError naming both limits when even the hard one is too low."""
    needed = _open_descriptors() + count + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise DataError(f"{what} keeps {count} files open (one per memory-mapped array), about {needed} with the "
                        f"rest of the process, but the open-file limit is {soft} (hard limit {hard}); raise it "
                        f"(ulimit -n {needed} in the shell, LimitNOFILE= for a service, nofile in "
                        "/etc/security/limits.conf) or train on fewer sequences per run")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))
    new = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    log(f"open files: {what} keeps {count} files open; raised the soft open-file limit from {soft} to "
        f"{_limit_text(new)} (the hard limit)")


def map_failure(exc: OSError, path: os.PathLike | str, nbytes: int) -> DataError | None:
    """A clear DataError for a failed memory map of ``path`` (``nbytes``), or None when ``exc`` is another failure."""
    if exc.errno == errno.EMFILE:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return DataError(f"cannot map {path}: too many open files (limit {_limit_text(soft)}, hard "
                         f"{_limit_text(hard)}); raise it with ulimit -n")
    if exc.errno == errno.ENOMEM:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        limit = ("no address-space limit is set, so memory itself ran out" if soft == resource.RLIM_INFINITY
                 else f"the address-space limit (ulimit -v) is {soft / 2**20:.0f} MiB")
        return DataError(f"cannot map {path} ({nbytes / 2**20:.1f} MiB) into memory: {limit}; raise the limit "
                         "(ulimit -v unlimited) or lower the cache size (training.image_size, "
                         "dataset.cache_images: false)")
    return None
