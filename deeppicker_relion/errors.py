"""Exceptions with one-line, user-facing messages."""

from __future__ import annotations

from pathlib import Path


class DeepPickerError(Exception):
    """A problem the user can fix; ``str(err)`` is one line naming the file and the problem."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        text = " ".join(str(message).split())
        super().__init__(f"{self.path}: {text}" if self.path else text)


class MicrographError(DeepPickerError):
    """A problem with one micrograph: the micrograph is skipped, the job goes on."""


class JobError(DeepPickerError):
    """A problem with the job as a whole (arguments, STAR, weights): the job fails."""
