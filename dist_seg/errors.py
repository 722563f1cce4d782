"""User-facing errors.

Every error a user can fix (bad config, bad data, bad checkpoint) is raised as a
:class:`DistSegError` whose message names the file or key and says how to fix it.
Entry points print these without a traceback; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import os
import traceback


class DistSegError(Exception):
    """An error caused by user input, with a message that names the fix."""


class ConfigError(DistSegError):
    """The configuration is missing a key, has an unknown key, a wrong type or an impossible value."""


class DataError(DistSegError):
    """The dataset on disk is incomplete, unreadable or inconsistent."""


class CheckpointError(DistSegError):
    """A checkpoint is missing, truncated or was not written by dist_seg."""


class DiskSpaceError(DistSegError):
    """A folder has too little free space for what dist_seg must write there."""


class FailedOnAnotherRank(DistSegError):
    """Another rank hit a user error and reports it; this rank stops without repeating it."""

class ExportError(DistSegError):
    """A model cannot be exported, its artifact fails the parity check, or a deployment file is unusable."""


def describe_raised(exc: BaseException) -> str:
    """``Type: message at file:line`` for an exception from user code: the innermost frame names the culprit."""
    text = f"{type(exc).__name__}: {exc}"
    # The innermost frame outside torch: the user's line that called the layer that failed.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}torch{os.sep}" not in f.filename]
    if frames and not isinstance(exc, SyntaxError):  # a SyntaxError's message already names file and line
        text += f" at {frames[-1].filename}:{frames[-1].lineno}"
    return text


def user_message(exc: DistSegError) -> str:
    """The error's own message, also when a DataLoader worker re-raised it wrapped in its traceback.

    PyTorch re-raises a worker's exception as the same type with the message
    "Caught DataError in DataLoader worker process 0. Original Traceback ...".
    """
    text = str(exc)
    marker = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    if "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text
